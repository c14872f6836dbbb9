"""Downloads: Hugging Face Hub files and pinned URLs, cached, checksummed, offline-aware.

Every function here returns a local path or raises :class:`DownloadError`
naming the file that is needed and how to supply it without a network.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Iterator, Optional

from tqdm.auto import tqdm

from .errors import DownloadError
from .files import use_default_permissions

if TYPE_CHECKING:  # pragma: no cover
    from .registry import WeightsFile

OFFLINE_ENVS = ("HF_HUB_OFFLINE", "IMAGEREWARD_OFFLINE")
LEGACY_CACHE = os.path.join("~", ".cache", "ImageReward")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``IMAGEREWARD_OFFLINE`` is set to a true value."""
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in OFFLINE_ENVS
    )


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """Forbid downloads inside the block (``IMAGEREWARD_OFFLINE=1``), then restore the setting."""
    previous = os.environ.get("IMAGEREWARD_OFFLINE")
    os.environ["IMAGEREWARD_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["IMAGEREWARD_OFFLINE"]
        else:
            os.environ["IMAGEREWARD_OFFLINE"] = previous


def default_cache_dir() -> str:
    """Where URL downloads go when no ``download_root`` is given."""
    base = os.environ.get("IMAGEREWARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "imagereward"
    )
    return os.path.expanduser(base)


def legacy_cache_dir() -> str:
    """The original package's default download root, reused when it already holds a file."""
    return os.path.expanduser(LEGACY_CACHE)


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unresolvable(url: str) -> Optional[str]:
    """Why ``url``'s host cannot be reached at all (its name does not resolve), else None.

    Checked before a hub download, whose client would retry for half a minute without
    a network; a resolver answers at once either way.
    """
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as error:
        return f"cannot resolve {host}: {error.strerror or error}"
    return None


def fetch_hub_file(
    repo_id: str,
    filename: str,
    *,
    what: str,
    local_hint: str,
    local_dir: Optional[str] = None,
    revision: Optional[str] = None,
) -> str:
    """``hf_hub_download`` into the HF cache (or ``local_dir``), with a useful error.

    A file already in ``local_dir`` is used as it is, without contacting the Hub.
    """
    if local_dir is not None:
        existing = os.path.join(os.path.expanduser(local_dir), filename)
        if os.path.isfile(existing):
            return existing
    from huggingface_hub import constants, hf_hub_download

    unreachable = None if is_offline() else unresolvable(constants.ENDPOINT)
    try:
        return hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=os.path.expanduser(local_dir) if local_dir else None,
            local_files_only=is_offline() or unreachable is not None,
        )
    except Exception as error:  # network, offline cache miss, auth: all end here
        if is_offline():
            mode = "offline mode is on and it is not cached"
        elif unreachable is not None:
            mode = f"no network ({unreachable}) and it is not cached; use --offline or --checkpoint PATH"
        else:
            mode = str(error).rstrip(". ")
        raise DownloadError(
            f"Could not get {what} ({filename} from the Hugging Face repo {repo_id}): {mode}. "
            f"To work without a network, {local_hint}."
        ) from error


def download_url(
    url: str,
    root: str,
    filename: str,
    *,
    sha256: Optional[str] = None,
    what: str,
    local_hint: str,
) -> str:
    """Fetch ``url`` to ``root/filename`` unless present (and matching ``sha256`` if known).

    A cached file whose checksum does not match is downloaded again; a download
    whose checksum does not match is discarded and reported.
    """
    root = os.path.expanduser(root)
    target = os.path.join(root, filename)
    if os.path.exists(target) and not os.path.isfile(target):
        raise DownloadError(f"{target} exists and is not a regular file")
    if os.path.isfile(target) and (sha256 is None or sha256_file(target) == sha256):
        return target
    if is_offline():
        raise DownloadError(
            f"Could not get {what}: offline mode is on and {target} is missing or does not "
            f"match its checksum. Download {url} there, or {local_hint}."
        )
    os.makedirs(root, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=filename + ".", suffix=".part", dir=root)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as output, urllib.request.urlopen(url, timeout=60) as source:
            total = int(source.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    output.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(
                f"Downloaded {what} from {url} but its sha256 {digest.hexdigest()} "
                f"does not match the expected {sha256}"
            )
        shutil.move(use_default_permissions(partial), target)  # mkstemp makes it 0600
    except DownloadError:
        raise
    except Exception as error:
        raise DownloadError(
            f"Could not download {what} from {url}: {error}. "
            f"To work without a network, put the file at {target}, or {local_hint}."
        ) from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _cached(spec: "WeightsFile", root: str) -> Optional[str]:
    """An existing copy of ``spec`` in ``root`` (checksum-verified when one is known)."""
    for name in (spec.filename, *spec.aliases):
        path = os.path.join(os.path.expanduser(root), name)
        if os.path.isfile(path) and (spec.sha256 is None or sha256_file(path) == spec.sha256):
            return path
    return None


def fetch_weights(spec: "WeightsFile", download_root: Optional[str] = None, hint: Optional[str] = None) -> str:
    """Local path of a registered weights file, downloading it when needed.

    Without ``download_root``, a copy in the original package's cache
    (``~/.cache/ImageReward``) is reused; otherwise hub files go to the Hugging Face
    cache and URL files to ``~/.cache/imagereward`` (``IMAGEREWARD_CACHE``). ``hint`` says
    how to give a local copy instead (the flag or argument that works for this file).
    """
    hint = hint or f"pass the path of a local {spec.filename} (checkpoint=PATH, or --checkpoint PATH)"
    root = download_root
    if root is None and _cached(spec, legacy_cache_dir()):
        root = legacy_cache_dir()
    if spec.repo_id is not None:
        return fetch_hub_file(spec.repo_id, spec.filename, what=spec.what, local_hint=hint, local_dir=root)
    root = root or default_cache_dir()
    found = _cached(spec, root)
    if found is not None:
        return found
    assert spec.url is not None
    return download_url(spec.url, root, spec.filename, sha256=spec.sha256, what=spec.what, local_hint=hint)
