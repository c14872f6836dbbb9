"""Which scorers a data-set job runs, and how each worker loads them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

@dataclass
class ModelSpec:
    """A scorer to load in every worker: a registered name, optional local weights, options.

    ``name`` is any name of :func:`imagereward.available_models` (``ImageReward-v1.0``,
    ``CLIP``, ``BLIP``, ``Aesthetic``, ...); ``checkpoint`` local weights for it (a file,
    or a ``save_pretrained`` folder); ``options`` further keyword arguments of
    :func:`imagereward.load` (``files`` by role, e.g. ``{"clip": path}`` for Aesthetic,
    ``download_root``, ``config``, ``vocab_file``, ``bpe_file``). Paths must be readable
    on every node that scores. ``column`` names the output column (default: the name).
    """

    name: str
    checkpoint: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    column: Optional[str] = None

    def __post_init__(self) -> None:
        from ..registry import get_entry

        self.name = get_entry(self.name).name  # canonical spelling; unknown names fail here
        if self.column is None:
            self.column = self.name

    def load(self, device: Optional[str] = None, dtype: Optional[str] = None, batch_size: int = 16) -> Any:
        """The ready scorer; pixels reach it decoded, so it keeps no decoding threads."""
        import imagereward

        return imagereward.load(self.name, device=device, dtype=dtype, checkpoint=self.checkpoint,
                                batch_size=batch_size, num_workers=0, **self.options)

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
        configs.append(scorer.preprocess.config.to_dict())
        del scorer
        gc.collect()
    return configs
