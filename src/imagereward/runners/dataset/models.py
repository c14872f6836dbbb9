"""How a data-set job's workers load its models: the one :class:`~imagereward.spec.ModelSpec`."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from ...spec import ModelSpec


def worker_spec(spec: ModelSpec, device: str, dtype: Any, batch_size: int) -> ModelSpec:
    """``spec`` as a scoring actor loads it: on its device, pixels arriving decoded (no threads)."""
    options = dict(spec.options, batch_size=batch_size, num_workers=0)
    return spec.replace(device=device, dtype=dtype or spec.dtype, options=options)


def preprocess_configs(specs: Sequence[ModelSpec]) -> List[Dict[str, Any]]:
    """Each scorer's preprocessing (``PreprocessConfig`` fields), from its checkpoint as the
    file holds it (:meth:`ModelSpec.preprocessing`: never cast to float32 or placed).

    Runs where it is called (the job runs it as a Ray task on a worker, where the
    weights are); models are read one after the other.
    """
    import gc

    configs = []
    for spec in specs:
        configs.append(spec.preprocessing().to_dict())
        gc.collect()
    return configs
