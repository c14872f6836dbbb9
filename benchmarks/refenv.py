"""The reference oracle: image-reward 1.5 in its own virtual environment.

The reference is never a dependency of the product; the parity and speed tools
create this environment once (about 6 GB, from PyPI and the local wheel store),
then run ``reference_side.py`` inside it, offline, with a Hugging Face cache that
holds only the BERT vocabulary.

Where no virtual environment can be built (the GPU machine has no network), the
reference runs on this interpreter from a folder of installed wheels named by
``IMAGEREWARD_REF_SITE``, and ours from the ``PYTHONPATH`` in ``IMAGEREWARD_OURS_PATH``
(see ``gpu.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("IMAGEREWARD_SHARED", REPO.parent / "shared"))
BERT_VOCAB = SHARED / "data" / "bert-base-uncased-vocab.txt"
REFERENCE_DATA = SHARED / "reference" / "data"
DEFAULT_VENV = Path(os.path.expanduser("~/.cache/imagereward-bench/refvenv"))

# DEVELOPERS.md: a set that installs and runs image-reward 1.5 on Python 3.11.
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
REFERENCE = "image-reward==1.5"
REFERENCE_DEPS = [
    "transformers==4.36.2", "tokenizers==0.15.2", "huggingface_hub==0.25.2", "timm==0.6.13",
    "fairscale==0.4.13", "diffusers==0.25.1", "accelerate==0.26.1", "datasets==2.16.1",
    "pyarrow==17.0.0", "numpy==1.26.4", "setuptools==80.10.2", "clip-anytorch==2.6.0", "ftfy",
]
_SNAPSHOT = "0" * 40
REF_SITE_ENV = "IMAGEREWARD_REF_SITE"
OURS_PATH_ENV = "IMAGEREWARD_OURS_PATH"

# imscore 0.0.11, the other plain-PyTorch ImageReward port, as a speed peer. Its
# torchvision links against a CUDA build of torch, so it gets torch 2.14.1 (the
# reference's build); transformers 5 removed an API its tokenizer setup calls.
IMSCORE_VENV = Path(os.path.expanduser("~/.cache/imagereward-bench/imscorevenv"))
IMSCORE_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
IMSCORE = ["imscore==0.0.11", "transformers>=4.53,<5", "einops", "loguru", "open-clip-torch"]
IMSCORE_SITE_ENV = "IMAGEREWARD_IMSCORE_SITE"


def venv_python(venv: Optional[Path] = None) -> Path:
    venv = Path(os.environ.get("IMAGEREWARD_REF_VENV", venv or DEFAULT_VENV))
    return venv / "bin" / "python"


def ensure_reference_venv(venv: Optional[Path] = None) -> Path:
    """Create the reference environment if it is not there yet; return its python."""
    python = venv_python(venv)
    if python.exists() and _imports_reference(python):
        return python
    root = python.parent.parent
    print(f"[refenv] creating the reference environment in {root} (one time, several GB)")
    subprocess.run(["python3.11", "-m", "venv", str(root)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + TORCH, check=True)
    subprocess.run(pip + ["--no-deps", REFERENCE], check=True)
    subprocess.run(pip + REFERENCE_DEPS, check=True)
    if not _imports_reference(python):
        raise RuntimeError(f"the reference environment in {root} does not import ImageReward")
    return python


def reference_python() -> str:
    """The interpreter that runs the reference: this one over a wheel folder, or the venv's."""
    if os.environ.get(REF_SITE_ENV):
        return sys.executable
    return str(ensure_reference_venv())


def ensure_imscore_venv(venv: Optional[Path] = None) -> Path:
    """Create imscore's environment if it is not there yet; return its python."""
    root = Path(os.environ.get("IMAGEREWARD_IMSCORE_VENV", venv or IMSCORE_VENV))
    python = root / "bin" / "python"
    probe = [str(python), "-c", "import imscore.imreward.model"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[refenv] creating imscore's environment in {root} (one time, several GB)")
    subprocess.run(["python3.11", "-m", "venv", str(root)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + IMSCORE_TORCH, check=True)
    subprocess.run(pip + IMSCORE + IMSCORE_TORCH, check=True)
    subprocess.run(probe, check=True)
    return python


def imscore_python() -> str:
    """imscore's interpreter: this one over a wheel folder (GPU machine), or its venv's."""
    if os.environ.get(IMSCORE_SITE_ENV):
        return sys.executable
    return str(ensure_imscore_venv())


def python_for(impl: str) -> str:
    """The interpreter of one side; ours may be another one (``IMAGEREWARD_OURS_PYTHON``),
    so that both sides of a comparison can run on the same torch build."""
    if impl == "reference":
        return reference_python()
    if impl == "imscore":
        return imscore_python()
    return os.environ.get("IMAGEREWARD_OURS_PYTHON") or sys.executable


def _imports_reference(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; assert u.find_spec('ImageReward')"],
        capture_output=True,
    )
    return probe.returncode == 0


def offline_hf_home(workdir: Path) -> Path:
    """An HF cache in hub layout holding ``bert-base-uncased/vocab.txt`` (nothing else)."""
    home = workdir / "hf"
    repo = home / "hub" / "models--bert-base-uncased"
    snapshot = repo / "snapshots" / _SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BERT_VOCAB, snapshot / "vocab.txt")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(_SNAPSHOT)
    return home


def offline_env(workdir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HOME=str(offline_hf_home(workdir)),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        IMAGEREWARD_OFFLINE="1",
        IMAGEREWARD_BERT_VOCAB=str(BERT_VOCAB),
        PYTHONWARNINGS="ignore",
    )
    env.pop("PYTHONPATH", None)
    return env


def side_env(workdir: Path, impl: str) -> Dict[str, str]:
    """The offline environment for one side, with its import path where one is configured."""
    env = offline_env(workdir)
    path = os.environ.get({"reference": REF_SITE_ENV, "imscore": IMSCORE_SITE_ENV}.get(impl, OURS_PATH_ENV))
    if path:
        env["PYTHONPATH"] = path
    return env


def run_reference(command: str, args: Dict[str, object], workdir: Path) -> Dict[str, object]:
    """Run ``reference_side.py COMMAND`` in the reference venv; exchange JSON through files."""
    python = reference_python()
    request = workdir / f"{command}.request.json"
    reply = workdir / f"{command}.reply.json"
    request.write_text(json.dumps(args))
    subprocess.run(
        [str(python), str(HERE / "reference_side.py"), command, str(request), str(reply)],
        check=True,
        env=side_env(workdir, "reference"),
        cwd=str(workdir),
    )
    return json.loads(reply.read_text())

