"""Reading checkpoint files safely and loading them strictly into meta-built models."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import CheckpointError

StateDict = Dict[str, torch.Tensor]
DDP_PREFIX = "module."
_MAX_LISTED = 12

# Entries of OpenAI's TorchScript archives that are not weights.
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path: str, key: Optional[str] = None) -> StateDict:
    """Tensors of a ``.safetensors`` file or a ``torch.save`` file (``weights_only``, mmap).

    ``key`` selects a nested dict (BLIP's pretraining files keep weights under ``"model"``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Checkpoint file not found", path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            data: object = load_file(path, device="cpu")
        except Exception as error:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {error}") from error
    else:
        data = _torch_load(path)
    if key is not None:
        if not isinstance(data, Mapping) or key not in data:
            raise CheckpointError(f"{path} has no {key!r} entry; is it the right checkpoint?")
        data = data[key]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(data).__name__})")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def _torch_load(path: str) -> object:
    """``torch.load`` with ``weights_only=True``; anything it refuses is "not a checkpoint".

    torch's own refusal text is not passed on: it suggests ``weights_only=False``, which
    would let the file run code.
    """
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format of torch >= 1.6
    if mmap:
        with zipfile.ZipFile(path) as archive:
            if _is_torchscript(archive):
                raise CheckpointError(
                    f"{path} is a TorchScript archive, the format OpenAI ships CLIP's weights in, "
                    "not a state dict; a CLIP file is read as such by the scorers that use CLIP "
                    "(did you mean --model CLIP, or the CLIP file of a scorer that reads one?)"
                )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        if mmap:
            raise CheckpointError(
                f"{path} is not a plain checkpoint: it holds Python objects besides tensors, "
                "and checkpoints are read without running code from the file. Save the weights "
                "as a state dict of tensors (torch.save(model.state_dict(), ...)) or as safetensors"
            ) from None
        raise CheckpointError(_not_a_checkpoint(path)) from None
    except Exception:  # truncated or foreign files fail in many ways (EOFError, KeyError, ...)
        raise CheckpointError(_not_a_checkpoint(path)) from None


def _not_a_checkpoint(path: str) -> str:
    return (
        f"{path} is not a checkpoint: it is neither a PyTorch weights file (torch.save) nor "
        "safetensors, or it is truncated or damaged"
    )


def strip_prefix(state_dict: StateDict, prefix: str = DDP_PREFIX) -> StateDict:
    """Drop ``prefix`` when every key carries it (checkpoints saved from DDP)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def select_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Keys under ``prefix``, with it removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def load_state_dict_strict(
    model: nn.Module,
    state_dict: StateDict,
    *,
    source: str,
    ignore: Sequence[str] = (),
    dtype: Optional[torch.dtype] = None,
    key_names: Optional[Mapping[str, str]] = None,
) -> None:
    """Load with every key accounted for, assigning tensors (the model may live on ``meta``).

    ``ignore`` holds regular expressions of checkpoint keys that are known and unused.
    Missing, unexpected or mis-shaped keys raise :class:`CheckpointError` naming them;
    ``key_names`` maps model keys to the checkpoint's own names for those messages
    (for layouts whose keys were translated before loading).
    Floating tensors are cast to ``dtype`` when given (else to the model's own dtypes).
    """
    names = key_names or {}
    expected = model.state_dict()
    ignored = [re.compile(p) for p in ignore]
    unexpected = [
        k for k in state_dict if k not in expected and not any(p.fullmatch(k) for p in ignored)
    ]
    missing = [names.get(k, k) for k in expected if k not in state_dict]
    mismatched = [
        f"{names.get(k, k)} (checkpoint {tuple(state_dict[k].shape)}, "
        f"model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    tensors = {}
    for name, reference in expected.items():
        tensor = state_dict[name]
        if tensor.is_floating_point():
            tensor = tensor.to(dtype or reference.dtype)
        tensors[name] = tensor
    model.load_state_dict(tensors, strict=True, assign=True)


def _is_torchscript(archive: zipfile.ZipFile) -> bool:
    return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def read_clip_checkpoint(path: str) -> StateDict:
    """Weights of an OpenAI CLIP file: a TorchScript archive or a ``torch.save`` state dict.

    TorchScript archives are read with ``torch.jit.load`` and only their tensors are
    kept (the archive's methods are never called); non-weight entries are dropped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "CLIP checkpoint file not found", path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a CLIP checkpoint: expected a TorchScript archive such as "
            "OpenAI's ViT-L-14.pt, or a torch.save zip file"
        )
    with zipfile.ZipFile(path) as archive:
        scripted = _is_torchscript(archive)
    if not scripted:
        state = read_state_dict(path)
    else:
        try:
            with warnings.catch_warnings():  # newer torch deprecates TorchScript; the files remain
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception as error:  # corrupt or foreign archives fail in many ways
            raise CheckpointError(f"cannot read TorchScript archive {path}: {error}") from error
    return {
        key: value
        for key, value in strip_prefix(dict(state)).items()
        if isinstance(value, torch.Tensor) and key not in CLIP_METADATA_KEYS
    }
