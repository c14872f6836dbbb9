"""Which scorers a data-set job runs, and how each worker loads them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

IMAGEREWARD = "ImageReward-v1.0"
BASELINES = ("CLIP", "BLIP", "Aesthetic")


@dataclass
class ModelSpec:
    """A scorer to load in every worker: a registered name, optional local weights, options.

    ``name`` is ``ImageReward-v1.0`` or a baseline (``CLIP``, ``BLIP``, ``Aesthetic``);
    ``checkpoint`` local weights for it (for ImageReward also a ``save_pretrained``
    folder); ``options`` further keyword arguments of :func:`imagereward.load` or
    :func:`imagereward.load_score` (``clip_checkpoint``, ``download_root``, ``config``,
    ``vocab_file``, ``bpe_file``). Paths must be readable on every node that scores.
    ``column`` names the output column (default: ``name``).
    """

    name: str
    checkpoint: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    column: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name not in (IMAGEREWARD, *BASELINES):
            raise ValueError(f"unknown model {self.name!r}; choose from {IMAGEREWARD}, "
                             f"{', '.join(BASELINES)}")
        if self.column is None:
            self.column = self.name

    def load(self, device: Optional[str] = None, dtype: Optional[str] = None, batch_size: int = 16) -> Any:
        """The ready scorer; pixels reach it decoded, so it keeps no decoding threads."""
        import imagereward

        common = dict(device=device, dtype=dtype, batch_size=batch_size, num_workers=0, **self.options)
        if self.name == IMAGEREWARD:
            return imagereward.load(self.checkpoint or self.name, **common)
        return imagereward.load_score(self.name, checkpoint=self.checkpoint, **common)

    def describe(self) -> Dict[str, Any]:
        """A JSON-able description, recorded with the job so that a rerun scores the same way."""
        options = {key: _describe(value) for key, value in sorted(self.options.items())}
        return {"name": self.name, "checkpoint": self.checkpoint, "column": self.column,
                "options": options}


def _describe(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def preprocess_configs(specs: Sequence[ModelSpec]) -> List[Dict[str, Any]]:
    """Each scorer's preprocessing (``PreprocessConfig`` fields), read from the loaded scorer.

    Runs where it is called (the job runs it as a Ray task on a worker, where the
    weights are); models load one after the other, on the CPU.
    """
    import gc

    configs = []
    for spec in specs:
        scorer = spec.load(device="cpu")
        configs.append(dataclasses.asdict(scorer.preprocess.config))
        del scorer
        gc.collect()
    return configs
