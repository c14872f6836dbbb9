"""Pack what ``gpu.py`` needs on a GPU machine that has no network: about 17 MB.

    python benchmarks/gpu_bundle.py                 # writes .gpu/ for Python 3.12
    python benchmarks/gpu_bundle.py --python-version 3.11 --out .gpu311   # a CPU dry run here

The bundle holds wheels of the reference (image-reward 1.5 and the versions it was
released against, which the GPU image's newer packages would break), of imscore
0.0.11 and what its ImageReward imports beyond torch and torchvision, plus ftfy and
wcwidth for our CLIP tokenizer, and the two shared data files the benchmark reads:
the BERT vocabulary and the test set's prompts. Nothing of it is committed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import refenv

# What the reference's scoring code imports that the GPU image lacks or has too new.
# Its ReFL module (diffusers, accelerate, datasets) is not imported there.
REFERENCE_WHEELS = [
    refenv.REFERENCE,
    "transformers==4.36.2",
    "tokenizers==0.15.2",
    "huggingface_hub==0.25.2",
    "timm==0.6.13",
    "clip-anytorch==2.6.0",
    "setuptools==80.10.2",  # clip imports pkg_resources, gone from newer setuptools
]
SOURCE_ONLY = ["fairscale==0.4.13"]  # published as an sdist: built into a wheel here
OURS_WHEELS = ["ftfy==6.3.1", "wcwidth==0.2.13"]
# imscore's ImageReward: transformers 4.x (5 removed an API it calls), its tokenizer
# and hub packages, timm (PatchEmbed), einops; torch and torchvision come with the image.
IMSCORE_WHEELS = [
    "imscore==0.0.11", "transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2",
    "hf-xet==1.8.0", "safetensors==0.8.0", "timm==1.0.31", "einops==0.8.2", "regex", "pyyaml",
    "requests", "urllib3", "idna", "certifi", "charset-normalizer", "tqdm", "packaging",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def download(requirements: list, folder: Path, python_version: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python_version, "--implementation", "cp", *platforms,
         "-d", str(folder), *requirements],
        check=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=refenv.REPO / ".gpu")
    parser.add_argument("--python-version", default="3.12",
                        help="the GPU machine's Python (default: %(default)s)")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    reference, ours = out / "wheels" / "reference", out / "wheels" / "ours"
    download(REFERENCE_WHEELS, reference, args.python_version)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(reference),
                    *SOURCE_ONLY], check=True)
    download(OURS_WHEELS, ours, args.python_version)
    download(IMSCORE_WHEELS, out / "wheels" / "imscore", args.python_version)
    for wheel in ours.iterdir():  # the reference's CLIP needs ftfy too
        shutil.copy(wheel, reference / wheel.name)
    data = out / "shared"
    (data / "data").mkdir(parents=True)
    (data / "reference" / "data").mkdir(parents=True)
    shutil.copy(refenv.BERT_VOCAB, data / "data" / refenv.BERT_VOCAB.name)
    shutil.copy(refenv.REFERENCE_DATA / "test.json", data / "reference" / "data" / "test.json")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[gpu-bundle] {out}: {size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
