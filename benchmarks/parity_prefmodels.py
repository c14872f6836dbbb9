"""Parity of PickScore, HPSv2 and HPSv2.1 with their original code: same files, same inputs.

    python benchmarks/parity_prefmodels.py [--size tiny|full] [--prompts N] [--images N]
                                           [--models LIST] [--workdir DIR] [--markdown FILE]

Creates ``~/.cache/imagereward-bench/prefvenv`` on first use (torch, torchvision,
transformers 4.44.2 and hpsv2 1.2.0 from PyPI; see ``PREFVENV_PACKAGES``), writes
random-weight checkpoints with the original code (``CLIPModel.save_pretrained`` in
safetensors and ``pytorch_model.bin``; ``{"state_dict": ...}`` of hpsv2's own OpenCLIP
factory), scores the odd images of fixtures.py for each prompt with the original
inference code and with ours (``rank`` and ``score_matrix``), and compares scores,
rankings, token ids and preprocessed pixels. ``--size tiny`` uses two-layer towers
of ViT-H-14's shapes at 224 px; ``--size full`` the real ViT-H-14 (about 4 GB a file).
Exit status 1 when a score differs by more than 1e-4 of the score scale, a ranking
or a token id differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures import PROMPTS, odd_images  # noqa: E402
from openai_clip import varied_prompts  # noqa: E402
from refenv import SHARED  # noqa: E402

from imagereward.factory import load  # noqa: E402
from imagereward.scoring.base import ranks_from_rewards  # noqa: E402

BPE = SHARED / "data" / "bpe_simple_vocab_16e6.txt.gz"
PREFVENV = Path(os.path.expanduser("~/.cache/imagereward-bench/prefvenv"))
PREFVENV_PACKAGES = [
    ["torch==2.14.1", "torchvision==0.29.1"],
    ["--no-deps", "hpsv2==1.2.0"],
    ["ftfy", "regex", "tqdm", "huggingface-hub", "requests", "clint", "numpy", "pillow",
     "transformers==4.44.2"],
]
TOLERANCE = 1e-4  # of the score scale: logit_scale.exp() for PickScore, 1 for HPS
EXTRA_PROMPTS = [
    "A Photo Of A &amp;amp; Sign, “curly quotes” and ﬁsh",
    "an <|endoftext|> inside, then <end_of_text> and <START_OF_TEXT>",
    "a cat!<|endoftext|> and a <|ENDOFTEXT|> dog",
]

TINY = {
    "pickscore": {"text": {"num_hidden_layers": 2}, "vision": {"num_hidden_layers": 2}},
    "hps": {"embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 1280, "head_width": 80,
                           "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                         "layers": 2}},
}
FULL = {
    "pickscore": {},
    "hps": {"embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                           "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                         "layers": 24}},
}


def ensure_prefvenv() -> Path:
    python = PREFVENV / "bin" / "python"
    probe = [str(python), "-c", "import hpsv2.img_score, transformers"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[prefvenv] creating {PREFVENV} (one time)", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(PREFVENV)], check=True)
    for packages in PREFVENV_PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    # The hpsv2 1.2.0 wheel lacks the BPE merges its tokenizer opens at import time;
    # they are OpenAI's file, which we have (checksum-pinned) anyway.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    shutil.copyfile(BPE, Path(site) / "hpsv2" / "src" / "open_clip" / BPE.name)
    subprocess.run(probe, check=True)
    return python


def run_side(command: str, request: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    python = ensure_prefvenv()
    req, rep = workdir / f"{command}.request.json", workdir / f"{command}.reply.json"
    req.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               HPS_ROOT=str(workdir / "hps-root"))
    subprocess.run([str(python), str(HERE / "prefmodels_side.py"), command, str(req), str(rep)],
                   check=True, env=env, cwd=str(workdir))
    return json.loads(rep.read_text())


def through_end(rows: List[List[int]], end: int = 49407) -> List[List[int]]:
    return [row[: row.index(end) + 1] if end in row else row for row in rows]


def compare(name: str, ours: torch.Tensor, ours_rank: torch.Tensor, ref: Dict[str, Any],
            our_ids: torch.Tensor, our_pixels: List[float], seconds) -> Dict[str, Any]:
    theirs = torch.tensor(ref["scores"], dtype=torch.float64)
    scale = ref["scale"]
    diff = (ours.double() - theirs).abs().max().item()
    diff_rank = (ours_rank.double() - theirs).abs().max().item()
    same_ranks = all(
        ranks_from_rewards(a) == ranks_from_rewards(b)
        for a, b in zip(ours.tolist(), theirs.tolist())
    )
    gaps = [sorted(row)[i + 1] - sorted(row)[i] for row in theirs.tolist() for i in range(len(row) - 1)]
    # Through the first end token: Hugging Face pads with 49407 where OpenCLIP and we put 0.
    ours_cut, theirs_cut = map(through_end, (our_ids.tolist(), ref["token_ids"]))
    ids_equal = ours_cut == theirs_cut
    bad_ids = [i for i, (a, b) in enumerate(zip(ours_cut, theirs_cut)) if a != b]
    pixel_diff = max((abs(a - b) for a, b in zip(our_pixels, ref["pixel_sums"])), default=0.0)
    row = {
        "model": name, "pairs": theirs.numel(), "scale": scale,
        "max_abs_diff_matrix": diff, "max_abs_diff_rank": diff_rank,
        "relative": max(diff, diff_rank) / scale, "rankings_identical": same_ranks,
        "min_gap": min(gaps) if gaps else float("nan"), "token_rows": len(ref["token_ids"]),
        "token_ids_identical": ids_equal, "token_rows_differing": bad_ids[:10],
        "pixel_sum_max_abs_diff": pixel_diff, "seconds_original": ref["seconds"],
        "seconds_ours_rank": seconds[0], "seconds_ours_matrix": seconds[1], "converted_rgba": ref.get("converted_rgba", []),
    }
    row["ok"] = row["relative"] <= TOLERANCE and same_ranks and ids_equal
    return row


def our_scores(model, prompts: List[str], images: List[str]):
    """Scores by ``score_matrix`` and by one ``rank`` call per prompt (the originals'
    workload: every image for each prompt), with the seconds of each."""
    start = time.perf_counter()
    by_rank = torch.tensor([model.rank(p, images).rewards for p in prompts])
    middle = time.perf_counter()
    matrix = model.score_matrix(prompts, images)
    return matrix, by_rank, (middle - start, time.perf_counter() - middle)


def pixel_sums(model, images: List[str]) -> List[float]:
    return [float(model.preprocess(p).double().sum()) for p in images]


def prepare_run(args: argparse.Namespace, prompts: List[str], token_prompts: List[str]):
    """Torch's threads, the work folder of ``args.size``, the CLIP BPE and offline mode for
    our side, and what every request to the originals' side carries (the odd images,
    ``args.images`` of them when given): ``(workdir, common request fields)``."""
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve() / args.size
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["IMAGEREWARD_CLIP_BPE"] = str(BPE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    images = odd_images(workdir.parent)
    if args.images:
        images = images[: args.images]
    return workdir, {"images": images, "prompts": prompts, "token_prompts": token_prompts,
                     "bpe": str(BPE), "workdir": str(workdir), "threads": args.threads}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS) + len(EXTRA_PROMPTS),
                        help="how many of the odd prompts to score (default: all)")
    parser.add_argument("--images", type=int, default=0,
                        help="score only the first N parity images (default: all)")
    parser.add_argument("--layouts", default="safetensors,bin",
                        help="PickScore files to check: safetensors, bin or both")
    parser.add_argument("--models", default="PickScore,HPSv2,HPSv2.1")
    parser.add_argument("--workdir", default=".bench/parity-prefmodels")
    parser.add_argument("--markdown", help="append the results table to this file")
    parser.add_argument("--write-token-fixture", metavar="JSON",
                        help="write the original fast tokenizer's ids (through the end token) "
                        "of the tokenizer prompts here (tests/data/hf_clip_token_ids.json)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    sizes = TINY if args.size == "tiny" else FULL
    prompts = (PROMPTS + EXTRA_PROMPTS)[: args.prompts]
    token_prompts = PROMPTS + EXTRA_PROMPTS + varied_prompts(300, seed=15)
    workdir, common = prepare_run(args, prompts, token_prompts)
    images = common["images"]
    rows: List[Dict[str, Any]] = []
    versions: Dict[str, str] = {}
    wanted = args.models.split(",")
    if "PickScore" in wanted:
        out = workdir / "pickscore"
        layouts = args.layouts.split(",")
        files = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}
        if not all((out / layout / files[layout]).exists() for layout in layouts):
            run_side("make-pickscore", {"out": str(out), "sizes": sizes["pickscore"], "seed": 0,
                                        "noise": 0.02, "layouts": layouts}, workdir)
        for layout in layouts:
            ref = run_side("score-pickscore", {**common, "folder": str(out / layout)}, workdir)
            versions = ref["versions"]
            if args.write_token_fixture:
                fixture = {"source": f"transformers {versions['transformers']} CLIPTokenizerFast "
                           "(CLIP BPE), truncation=True, max_length=77; ids through the end token",
                           "prompts": token_prompts, "input_ids": through_end(ref["token_ids"])}
                Path(args.write_token_fixture).write_text(json.dumps(fixture, ensure_ascii=False))
            model = load("PickScore", checkpoint=str(out / layout / files[layout]), device="cpu")
            matrix, by_rank, seconds = our_scores(model, prompts, images)
            rows.append(compare(f"PickScore ({layout})", matrix, by_rank, ref,
                                model.tokenizer(token_prompts), pixel_sums(model, images), seconds))
            print(json.dumps(rows[-1]), flush=True)
            del model
    model_config = sizes["hps"]
    for seed, name in enumerate(("HPSv2", "HPSv2.1"), start=1):
        if name not in wanted:
            continue
        checkpoint = workdir / f"{name}.pt"
        request = {"model_name": f"ViT-H-14-parity-{args.size}", "model_config": model_config}
        if not checkpoint.exists():
            # HPSv2.1's file in fp16 like the released ones, HPSv2's in fp32 (both load).
            run_side("make-hps", {**request, "out": str(checkpoint), "seed": seed, "noise": 0.02,
                                  "half": name == "HPSv2.1"}, workdir)
        ref = run_side("score-hps", {**common, **request, "checkpoint": str(checkpoint)}, workdir)
        versions = {**versions, **ref["versions"]}
        model = load(name, checkpoint=str(checkpoint), device="cpu")
        matrix, by_rank, seconds = our_scores(model, prompts, images)
        rows.append(compare(name, matrix, by_rank, ref, model.tokenizer(token_prompts),
                            pixel_sums(model, images), seconds))
        print(json.dumps(rows[-1]), flush=True)
        del model
    report(rows, versions, args, len(images), len(prompts), len(token_prompts))
    return 0 if all(r["ok"] for r in rows) else 1


def report(rows, versions, args, n_images, n_prompts, n_tokens) -> None:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        flags = " ".join(f for f in open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
                         if f.startswith(("avx", "amx")))
    except (OSError, IndexError):
        pass
    lines = [
        f"\n### Parity, {args.size} ({n_images} images x {n_prompts} prompts, {n_tokens} tokenizer prompts)\n",
        f"Ours: torch {torch.__version__}; originals: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; CPU {cpu} ({flags}), "
        f"{args.threads} threads.\n",
        "| model | pairs | score scale | max abs diff (score_matrix / rank) | / scale | rankings | "
        "token ids | pixel-sum max diff | original s | ours s (rank / score_matrix) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['pairs']} | {r['scale']:.4g} | {r['max_abs_diff_matrix']:.2e} / "
            f"{r['max_abs_diff_rank']:.2e} | {r['relative']:.2e} | "
            f"{'identical' if r['rankings_identical'] else 'DIFFER'} (min gap {r['min_gap']:.2e}) | "
            f"{'identical' if r['token_ids_identical'] else 'DIFFER ' + str(r['token_rows_differing'])} "
            f"({r['token_rows']} prompts) | {r['pixel_sum_max_abs_diff']:.2e} | "
            f"{r['seconds_original']:.1f} | {r['seconds_ours_rank']:.1f} / {r['seconds_ours_matrix']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
