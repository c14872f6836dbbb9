"""Score whole data sets on Ray Data: on a laptop or a cluster, restartable, nothing lost.

>>> from imagereward.runners.dataset import score_dataset
>>> summary = score_dataset("prompts.jsonl", "scores/", models=["ImageReward-v1.0", "Aesthetic"])
>>> print(summary.line())

Needs the ``ray`` extra (``pip install 'imagereward[ray]'``); importing this package
does not import Ray, which is only loaded when a job runs.
"""

from .inputs import Columns, DatasetInputError, Fragment, InputPlan, plan_input
from .job import DatasetJob, JobSummary, ExtraMissingError, require_ray, score_dataset
from ...spec import ModelSpec

__all__ = [
    "Columns",
    "DatasetInputError",
    "DatasetJob",
    "Fragment",
    "InputPlan",
    "JobSummary",
    "ModelSpec",
    "ExtraMissingError",
    "plan_input",
    "require_ray",
    "score_dataset",
]
