"""The int8 calibration file: each linear layer's observed input range (see :mod:`imagereward.int8`).

Plain JSON, read and written without torch (the command line checks ``--int8`` files
before it loads anything)::

    {"format": "imagereward-int8-calibration", "version": 1, "model": "ImageReward-v1.0",
     "fingerprint": "...", "dtype": "bf16", "pairs": 256,
     "ranges": {"blip.visual_encoder.blocks.0.attn.qkv": [-4.1, 5.3], ...},
     "fused": {"blip.visual_encoder.blocks.0.mlp.fc1": "blip.visual_encoder.blocks.0.mlp.fc2", ...}}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

from .errors import CalibrationError

FORMAT = "imagereward-int8-calibration"
VERSION = 1


@dataclass(frozen=True)
class Int8Calibration:
    """Observed input range of every linear layer of one model, by module name.

    ``fused`` maps a layer whose GELU output is the next layer's input, and nothing
    else's, to that next layer. ``pairs`` is how many (prompt, image) pairs were seen.
    """

    model: str
    fingerprint: str
    ranges: Mapping[str, Tuple[float, float]]
    fused: Mapping[str, str] = field(default_factory=dict)
    pairs: int = 0
    dtype: str = "bf16"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "model": self.model, "fingerprint": self.fingerprint,
            "dtype": self.dtype, "pairs": self.pairs,
            "ranges": {name: list(bounds) for name, bounds in self.ranges.items()},
            "fused": dict(self.fused),
        }

    def save(self, path: str) -> None:
        """Write as JSON (atomically: a crash leaves the old file or none)."""
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)
        os.replace(temporary, path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration") -> "Int8Calibration":
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CalibrationError(f"{source} is not an imagereward int8 calibration (no \"format\": {FORMAT!r})")
        if data.get("version") != VERSION:
            raise CalibrationError(f"{source} has calibration version {data.get('version')!r}; "
                                   f"this imagereward reads version {VERSION}")
        try:
            ranges = {str(name): (float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}
            fused = {str(a): str(b) for a, b in data.get("fused", {}).items()}
            calibration = cls(str(data["model"]), str(data["fingerprint"]), ranges, fused,
                              int(data.get("pairs", 0)), str(data.get("dtype", "bf16")))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CalibrationError(f"{source} is malformed: {error!r}") from None
        bad = [name for name, (lo, hi) in ranges.items() if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi)]
        if bad:
            raise CalibrationError(f"{source}: layer {bad[0]} has no finite range {ranges[bad[0]]}")
        unknown = sorted(set(fused) - set(ranges) | set(fused.values()) - set(ranges))
        if unknown:
            raise CalibrationError(f"{source}: fused layers {unknown} have no range")
        return calibration

    @classmethod
    def load(cls, path: str) -> "Int8Calibration":
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise CalibrationError(f"int8 calibration not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CalibrationError(f"int8 calibration {path} cannot be read: {error}") from None
        return cls.from_dict(data, source=f"int8 calibration {path}")


__all__ = ["FORMAT", "VERSION", "Int8Calibration"]
