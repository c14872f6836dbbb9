"""The ReFL reward: one differentiable scorer, or a weighted sum of several, frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..registry import find_entry
from ..spec import ModelSpec


@dataclass(frozen=True)
class RewardSpec:
    """A scorer ``name`` (registered, a checkpoint file or a saved folder), its local weights, its weight."""

    name: str
    checkpoint: str = ""
    weight: float = 1.0

    @property
    def label(self) -> str:
        return self.name if not self.checkpoint else f"{self.name}:{self.checkpoint}"

    def model_spec(self, device: torch.device, dtype: torch.dtype) -> ModelSpec:
        files = {"weights": self.checkpoint} if self.checkpoint else {}
        return ModelSpec(self.name, files, device=str(device), dtype=dtype, options={"num_workers": 0})


def parse_reward_specs(text: str) -> List[RewardSpec]:
    """``"ImageReward-v1.0"``, ``"ImageReward-v1.0=1,Aesthetic:/w/sac.pth=0.5"``, ...

    ``NAME:PATH`` gives a registered scorer local weights; anything else is one name or path.
    """
    specs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        weight = 1.0
        head, sep, tail = part.rpartition("=")
        if sep:
            try:
                weight = float(tail)
            except ValueError as error:
                raise ValueError(f"reward {part!r}: the weight after '=' must be a number") from error
            part = head
        name, sep, checkpoint = part.partition(":")
        if not sep or find_entry(name) is None:  # e.g. a path that contains ':'
            name, checkpoint = part, ""
        specs.append(RewardSpec(name, checkpoint, weight))
    if not specs:
        raise ValueError("reward: give at least one reward model")
    return specs


def load_reward_model(spec: RewardSpec, device: torch.device, dtype: torch.dtype) -> Any:
    """A frozen, eval-mode scorer with a differentiable ``score_tensors``."""
    model = spec.model_spec(device, dtype).load()
    model.requires_grad_(False)
    return model.eval()


class Reward:
    """Weighted sum of differentiable scorers: ``(pixels in [0, 1], prompts) -> [B]`` float32."""

    def __init__(self, models: Sequence[Tuple[str, Any, float]]) -> None:
        int8 = [name for name, model, _ in models if getattr(model, "int8_calibration", None) is not None]
        if int8:  # its layers would run in float under gradients: other numbers than it scores
            raise ValueError(f"{', '.join(int8)} runs in int8, which has no gradients: "
                             "give ReFL the float model")
        self.models = list(models)

    @classmethod
    def load(cls, text: str, device: torch.device, dtype: torch.dtype = torch.float32) -> "Reward":
        return cls([(s.label, load_reward_model(s, device, dtype), s.weight)
                    for s in parse_reward_specs(text)])

    def terms(self, pixels: torch.Tensor, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Each scorer's rewards ``[B]`` (float32, with gradient to ``pixels``)."""
        return {name: model.score_tensors(pixels, list(prompts)).float().reshape(-1)
                for name, model, _ in self.models}

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        terms = self.terms(pixels, prompts)
        return sum(weight * terms[name] for name, _, weight in self.models)  # type: ignore[return-value]
