"""Parity of MPS and HPSv3 with their original code: same files, same inputs.

    python benchmarks/parity_newmodels.py [--size tiny|full] [--models MPS,HPSv3]
                                          [--mps-repo DIR] [--workdir DIR] [--markdown FILE]

The originals run in ``~/.cache/imagereward-bench/hps3venv``: the ``hpsv3`` 1.0.0 package
with its pinned ``transformers==4.45.2`` (created on first use; it borrows torch 2.14.1 and
torchvision from ``prefvenv`` of parity_prefmodels.py), and MPS's repository code from a
checkout of github.com/Kwai-Kolors/MPS (``--mps-repo``). The original code writes the
random-weight checkpoints (MPS: its own model class saved whole with ``torch.save``, as
the released file is; HPSv3: ``Qwen2VLRewardModelBT`` as safetensors) and scores the
odd images of fixtures.py for each prompt with its own inference function; ours loads
the same files and scores with ``rank`` and ``score_matrix``. ``--size tiny`` uses
two-layer CLIP towers of ViT-H-14's widths for MPS (the cross model is always full
size) and a tiny Qwen2-VL for HPSv3; ``--size full`` the whole ViT-H-14 for MPS and, for
HPSv3, Qwen2-VL-7B's widths with one layer per tower (a full-size layer stack; the
whole 7B model does not fit this machine's memory in float32 on both sides).
Exit status 1 when a score differs by more than 1e-4 of the score scale, or a ranking
or a token id differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures import PROMPTS  # noqa: E402
from openai_clip import varied_prompts  # noqa: E402
from parity_prefmodels import (  # noqa: E402
    EXTRA_PROMPTS, TOLERANCE, compare, ensure_prefvenv, our_scores, pixel_sums, prepare_run, report,
)

from imagereward.factory import load  # noqa: E402

NEWVENV = Path(os.path.expanduser("~/.cache/imagereward-bench/hps3venv"))
NEWVENV_PACKAGES = [
    ["transformers==4.45.2", "peft==0.13.2", "trl==0.11.4", "accelerate==0.34.2", "datasets",
     "pandas", "matplotlib", "tensorboard", "omegaconf", "fire", "einops", "pyyaml", "rich"],
    ["--no-deps", "hpsv3==1.0.0"],
]
MORE_PROMPTS = ["", "ein Hund im Schnee, 雪の中の犬 🐕", " ".join(["a very long prompt"] * 40)]
TINY = {"mps": {"text": {"num_hidden_layers": 2}, "vision": {"num_hidden_layers": 2}}}
FULL = {"mps": {}}


def ensure_newvenv() -> Path:
    """hpsv3 with its pinned transformers; torch and torchvision come from prefvenv."""
    python = NEWVENV / "bin" / "python"
    probe = [str(python), "-c", "import hpsv3.inference, einops"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    prefvenv = ensure_prefvenv()
    print(f"[hps3venv] creating {NEWVENV} (one time)", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(NEWVENV)], check=True)
    site = lambda py: subprocess.run(  # noqa: E731
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(site(python), "zz_prefvenv.pth").write_text(site(prefvenv) + "\n")
    for packages in NEWVENV_PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    subprocess.run(probe, check=True)
    return python


def run_side(command: str, request: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    python = ensure_newvenv()
    req, rep = workdir / f"{command}.request.json", workdir / f"{command}.reply.json"
    req.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    subprocess.run([str(python), str(HERE / "newmodels_side.py"), command, str(req), str(rep)],
                   check=True, env=env, cwd=str(workdir))
    return json.loads(rep.read_text())


def run_mps(args, sizes, common, workdir: Path) -> Dict[str, Any]:
    checkpoint = workdir / "MPS_overall_checkpoint.pth"
    repo = str(Path(args.mps_repo).resolve())
    if not checkpoint.exists():
        run_side("make-mps", {"out": str(checkpoint), "sizes": sizes["mps"], "seed": 3, "noise": 0.02,
                              "half": False, "repo": repo}, workdir)
    ref = run_side("score-mps", {**common, "checkpoint": str(checkpoint), "repo": repo}, workdir)
    model = load("MPS", checkpoint=str(checkpoint), device="cpu")
    matrix, by_rank, seconds = our_scores(model, common["prompts"], common["images"])
    row = compare("MPS", matrix, by_rank, ref, model.tokenizer(common["token_prompts"]),
                  pixel_sums(model, common["images"]), seconds)
    # MPS reads every position: the full rows (padding included) must agree.
    row["token_ids_identical"] = model.tokenizer(common["token_prompts"]).tolist() == ref["token_ids"]
    row["ok"] = row["ok"] and row["token_ids_identical"]
    return {"row": row, "versions": ref["versions"]}


def run_hpsv3(args, sizes, common, workdir: Path) -> Dict[str, Any]:
    out = workdir / "hpsv3"
    if not (out / "HPSv3.safetensors").exists():
        run_side("make-hpsv3", {"out": str(out), "seed": 4, "noise": 0.02, "size": args.size}, workdir)
    ref = run_side("score-hpsv3", {**common, "out": str(out)}, workdir)
    files = {"weights": str(out / "HPSv3.safetensors"), "tokenizer": str(out / "tokenizer.json")}
    (out / "ours").mkdir(exist_ok=True)
    shutil.copyfile(out / "model-config.json", out / "ours" / "config.json")
    shutil.copyfile(out / "HPSv3.safetensors", out / "ours" / "HPSv3.safetensors")
    files["weights"] = str(out / "ours" / "HPSv3.safetensors")
    model = load("HPSv3", files=files, device="cpu", batch_size=4)
    prompts, images = common["prompts"], common["images"]
    matrix, by_rank, seconds = our_scores(model, prompts, images)
    sigmas = torch.tensor([model.score_details([p] * len(images), images)["sigma"] for p in prompts])
    tokens = model.tokenizer(common["token_prompts"])
    ours_ids = [torch.cat([model.network.prefix_ids, torch.full((n,), model.network.image_token_id),
                           row[: int(length)]]).tolist()
                for row, length, n in zip(tokens["input_ids"], tokens["lengths"],
                                          [_image_tokens(model, images[0])] * len(common["token_prompts"]))]
    row = compare("HPSv3", matrix, by_rank, ref, torch.zeros(0), [], seconds)
    row["token_ids_identical"] = ours_ids == ref["token_ids"]
    row["token_rows_differing"] = [i for i, (a, b) in enumerate(zip(ours_ids, ref["token_ids"])) if a != b][:10]
    # Qwen2-VL's patches repeat each image over the 2 frames of a temporal patch.
    ours_patch_sum = sum(2 * float(model.preprocess(p).double().sum()) for p in images)
    row["pixel_sum_max_abs_diff"] = abs(ours_patch_sum - ref["patch_sum"])
    row["sigma_max_abs_diff"] = (sigmas.double() - torch.tensor(ref["sigmas"], dtype=torch.float64)).abs().max().item()
    row["ok"] = row["relative"] <= TOLERANCE and row["rankings_identical"] and row["token_ids_identical"] \
        and row["sigma_max_abs_diff"] <= TOLERANCE
    return {"row": row, "versions": ref["versions"]}


def _image_tokens(model, image: str) -> int:
    from PIL import Image

    width, height = model.preprocess.native_size(*Image.open(image).size)
    return (width // 28) * (height // 28)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--models", default="MPS,HPSv3")
    parser.add_argument("--mps-repo", default=os.environ.get("MPS_REPO", ".bench/MPS"),
                        help="a checkout of github.com/Kwai-Kolors/MPS")
    parser.add_argument("--images", type=int, default=0, help="only the first N images (default: all)")
    parser.add_argument("--workdir", default=".bench/parity-newmodels")
    parser.add_argument("--markdown", help="append the results table to this file")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    sizes = TINY if args.size == "tiny" else FULL
    prompts = PROMPTS + EXTRA_PROMPTS + MORE_PROMPTS
    token_prompts = prompts + varied_prompts(300, seed=25)
    workdir, common = prepare_run(args, prompts, token_prompts)
    rows: List[Dict[str, Any]] = []
    versions: Dict[str, str] = {}
    for name, run in (("MPS", run_mps), ("HPSv3", run_hpsv3)):
        if name in args.models.split(","):
            result = run(args, sizes, common, workdir)
            rows.append(result["row"])
            versions.update(result["versions"])
            print(json.dumps(rows[-1]), flush=True)
    report(rows, versions, args, len(common["images"]), len(prompts), len(token_prompts))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
