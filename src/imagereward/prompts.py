"""Prompt arguments, checked the same way in-process and in the server's client.

This module imports neither torch nor numpy, so the client can use it.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Union

from .errors import PromptError


def check_prompt(prompt: Any, name: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise PromptError(f"{name} must be a str, got {type(prompt).__name__}")
    return prompt


def expand_prompts(prompts: Union[str, Sequence[str], None], count: int) -> List[str]:
    """One prompt per image: a single string is repeated ``count`` times."""
    if isinstance(prompts, str):
        return [prompts] * count
    if not isinstance(prompts, (list, tuple)):
        raise PromptError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    prompts = [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if len(prompts) != count:
        raise PromptError(f"got {len(prompts)} prompts for {count} images")
    return prompts


def check_prompts(prompts: Any) -> List[str]:
    """A list or tuple of str (a bare string is refused: it is one prompt, not a list)."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise PromptError(f"prompts must be a list or tuple of str, got {type(prompts).__name__}")
    return [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
