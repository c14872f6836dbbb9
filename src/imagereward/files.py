"""File-system helpers shared by the writers of weights and downloads."""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask (read by setting it and putting it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def use_default_permissions(path: str) -> str:
    """Give ``path`` the mode a plain ``open(path, "w")`` would: 0666 less the umask.

    safetensors and ``tempfile.mkstemp`` create files readable by their owner only (0600);
    weights that people share should follow the user's umask like every other output.
    """
    os.chmod(path, 0o666 & ~current_umask())
    return path
