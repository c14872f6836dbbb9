"""The tensors of a whole pickled ``nn.Module`` (``torch.save(model)``), read without running it.

Some checkpoints are whole models (MPS's ``MPS_overall_checkpoint.pth``): unpickling
them the ordinary way imports and runs the classes they name, and
``torch.load(weights_only=True)`` rightly refuses them. :func:`read_module_tensors`
unpickles such a file with an unpickler that builds tensors (through torch's own
rebuild functions, the ones ``weights_only`` allows) and plain containers, and
turns every other class or function the file names into an inert placeholder that
only records the state it is given; no code from the file's classes runs and
nothing is imported. The placeholders are then walked like modules
(``_parameters``, persistent ``_buffers``, ``_modules``) into the state dict the
model's ``state_dict()`` would have given.
"""

from __future__ import annotations

import builtins
import collections
import io
import pickle
import warnings
import zipfile
from typing import Any, Dict, Mapping, Tuple

import torch

from .errors import CheckpointError

StateDict = Dict[str, torch.Tensor]

# What the file may build for real: tensors through torch's rebuild functions, and containers.
_TORCH_REBUILDS = {
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy",
}
_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): builtins.set,
    ("builtins", "frozenset"): builtins.frozenset,
    ("builtins", "object"): builtins.object,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}

_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class Placeholder:
    """Stands for an object of a class the file names; keeps what unpickling gives it."""

    _origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_pickle_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickle_state"] = state

    def __repr__(self) -> str:
        return f"<placeholder for {self._origin}>"


class _RestrictedUnpickler(pickle.Unpickler):
    _placeholders: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)  # protocol 2 spells builtins "__builtin__"
        if module == "torch._utils" and name in _TORCH_REBUILDS:
            import torch._utils as torch_utils

            return getattr(torch_utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (Placeholder,), {"_origin": f"{module}.{name}"})
        return self._placeholders[key]


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "imagereward.module_pickle"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: io.IOBase, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _is_module(value: Any) -> bool:
    return isinstance(value, Placeholder) and isinstance(value.__dict__.get("_modules"), Mapping)


def module_state_dict(module: Any, prefix: str = "") -> StateDict:
    """The ``state_dict()`` of a placeholder module: parameters, persistent buffers, children."""
    state: StateDict = {}
    fields = module.__dict__
    for name, tensor in (fields.get("_parameters") or {}).items():
        if isinstance(tensor, torch.Tensor):
            state[prefix + name] = tensor.detach()
    skipped = fields.get("_non_persistent_buffers_set") or set()
    for name, tensor in (fields.get("_buffers") or {}).items():
        if isinstance(tensor, torch.Tensor) and name not in skipped:
            state[prefix + name] = tensor
    for name, child in fields["_modules"].items():
        if _is_module(child):
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


def read_module_tensors(path: str) -> StateDict:
    """The state dict of a whole model saved with ``torch.save(model)``, without running it.

    A file holding a plain state dict is returned as it is. Raises :class:`CheckpointError`
    when the file holds neither.
    """
    try:
        with warnings.catch_warnings():  # the legacy format's source checks of placeholders
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            data = torch.load(
                path, map_location="cpu", pickle_module=_PickleModule, weights_only=False,
                mmap=zipfile.is_zipfile(path),
            )
    except Exception as error:  # truncated or foreign files fail in many ways
        raise CheckpointError(
            f"{path} is not a checkpoint: neither a state dict nor a whole model saved with "
            f"torch.save ({type(error).__name__}: {error})"
        ) from None
    if _is_module(data):
        state = module_state_dict(data)
    elif isinstance(data, Mapping) and any(isinstance(v, torch.Tensor) for v in data.values()):
        state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    else:
        found = getattr(data, "_origin", type(data).__name__)
        raise CheckpointError(f"{path} holds neither a model nor a state dict (found {found})")
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state


__all__ = ["Placeholder", "module_state_dict", "read_module_tensors"]
