"""Parity with image-reward 1.5: same checkpoint files, same inputs, same numbers.

    python benchmarks/parity.py [--workdir .bench/parity] [--markdown docs/parity-results.md]

Creates the reference environment on first use (see refenv.py), writes random-weight
checkpoints in the original formats with the reference's own classes, scores the odd
images of fixtures.py for every odd prompt with both packages, and compares. Exit
status 1 when any scorer differs by more than the tolerance or ranks differently.
Each scorer is one entry of ``SCORERS``: how the reference makes and scores its
files, and how we load the same files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List

import refenv
from imagereward.scoring.base import ranks_from_rewards
from fixtures import PROMPTS, odd_images, write_med_config

TOLERANCE = 1e-4
MIN_GAP = 0.05  # rewards of different images must differ by more than this


@dataclass
class Scorer:
    """How one scorer is checked: make files with the reference, score with both."""

    make: Callable[[Path], Dict[str, object]]  # -> request for the reference's scoring
    reference_command: str
    load_ours: Callable[[Dict[str, object], str], object]  # (request, dtype) -> our scorer


def _make_imagereward(workdir: Path) -> Dict[str, object]:
    med_config = write_med_config(workdir)
    checkpoint = workdir / "ImageReward.pt"
    if not checkpoint.exists():
        refenv.run_reference(
            "make-imagereward",
            {"out": str(checkpoint), "med_config": str(med_config), "seed": 0, "head_scale": 30.0},
            workdir,
        )
    return {"checkpoint": str(checkpoint), "med_config": str(med_config)}


def _load_imagereward(request: Dict[str, object], dtype: str):
    import imagereward

    return imagereward.load(str(request["checkpoint"]), device="cpu", dtype=dtype)


# The baselines' files, under the names the original package caches them with.
BASELINE_FILES = {
    "CLIP": "ViT-L-14.pt",
    "BLIP": "model_large.pth",
    "Aesthetic": "sac%2Blogos%2Bava1-l14-linearMSE.pth",
}
CLIP_BPE = refenv.SHARED / "data" / "bpe_simple_vocab_16e6.txt.gz"


def _make_baseline(name: str, workdir: Path) -> Dict[str, object]:
    """All three baseline files in one download root (Aesthetic needs CLIP's too)."""
    from imagereward.hub import sha256_file

    root = workdir / "baselines"
    root.mkdir(exist_ok=True)
    files = {key: root / value for key, value in BASELINE_FILES.items()}
    requests = {
        "CLIP": ("make-clip", {"seed": 0}),
        "BLIP": ("make-blip", {"seed": 0, "med_config": str(write_med_config(root))}),
        "Aesthetic": ("make-aesthetic", {"seed": 0, "head_scale": 30.0}),
    }
    for key, (command, request) in requests.items():
        if not files[key].exists():
            refenv.run_reference(command, dict(request, out=str(files[key])), workdir)
    return {"name": name, "root": str(root), "clip_sha256": sha256_file(str(files["CLIP"]))}


def _load_baseline(request: Dict[str, object], dtype: str):
    """Our ``load_score`` on the same files, given as local paths (their hash is not OpenAI's)."""
    import imagereward

    root = Path(str(request["root"]))
    name = str(request["name"])
    files = {"checkpoint": str(root / BASELINE_FILES[name])}
    if name == "Aesthetic":
        files["clip_checkpoint"] = str(root / BASELINE_FILES["CLIP"])
    return imagereward.load_score(name, device="cpu", dtype=dtype, bpe_file=str(CLIP_BPE), **files)


SCORERS: Dict[str, Scorer] = {
    "ImageReward-v1.0": Scorer(_make_imagereward, "score-imagereward", _load_imagereward),
    "CLIP": Scorer(partial(_make_baseline, "CLIP"), "score-clip", _load_baseline),
    "BLIP": Scorer(partial(_make_baseline, "BLIP"), "score-blip", _load_baseline),
    "Aesthetic": Scorer(partial(_make_baseline, "Aesthetic"), "score-aesthetic", _load_baseline),
}


def _min_gap(rewards: List[float]) -> float:
    return min(abs(a - b) for a, b in itertools.combinations(rewards, 2))


def compare(
    name: str, scorer: Scorer, workdir: Path, images: List[str], dtypes: List[str]
) -> Dict[str, object]:
    """Rows of max |difference| and ranking agreement against the reference.

    In fp32 every prompt is ranked through the drop-in path (``rank``), and all prompts
    once more through ``score_matrix``; other precisions use ``score_matrix`` alone,
    which encodes each image once (bf16 on a CPU without native support is slow).
    """
    request = dict(scorer.make(workdir), prompts=PROMPTS, images=images)
    reference = refenv.run_reference(scorer.reference_command, request, workdir)
    results = reference["results"]
    rows = []

    def row(dtype: str, api: str, ref: Dict[str, object], rewards: List[float]) -> Dict[str, object]:
        return {
            "scorer": name, "dtype": dtype, "api": api, "prompt": ref["prompt"],
            "images": len(images),
            "max_abs_diff": max(abs(a - b) for a, b in zip(rewards, ref["rewards"])),
            "same_ranking": ranks_from_rewards(rewards) == ref["ranking"],
            "reference_min_gap": _min_gap(ref["rewards"]),
        }

    for dtype in dtypes:
        ours = scorer.load_ours(request, dtype)
        if dtype == "fp32":
            rows.extend(row(dtype, "rank", ref, ours.rank(ref["prompt"], images).rewards)
                        for ref in results)
        matrix = ours.score_matrix([ref["prompt"] for ref in results], images).tolist()
        rows.extend(row(dtype, "score_matrix", ref, rewards) for ref, rewards in zip(results, matrix))
        if dtype == "fp32":
            single = ours.score(PROMPTS[0], images[0])
            rows.append(
                {
                    "scorer": name, "dtype": dtype, "api": "score", "prompt": "one image",
                    "images": 1, "max_abs_diff": abs(single - reference["single"]),
                    "same_ranking": True, "reference_min_gap": float("nan"),
                }
            )
        del ours
    return {"rows": rows}


def _short(text: str, width: int = 48) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return repr(text) if len(text) <= width else repr(text[: width - 3]) + "..."


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = [
        "| scorer | dtype | API | prompt | images | max abs diff | same ranking | min reward gap (ref) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scorer']} | {row['dtype']} | {row['api']} | {_short(str(row['prompt']))} "
            f"| {row['images']} "
            f"| {row['max_abs_diff']:.2e} | {'yes' if row['same_ranking'] else 'NO'} "
            f"| {row['reference_min_gap']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=refenv.REPO / ".bench" / "parity")
    parser.add_argument("--scorers", default=",".join(SCORERS), help="comma list of scorers to check")
    parser.add_argument(
        "--dtypes", default="fp32",
        help="comma list of our precisions to compare (fp32 must match; bf16/fp16 are reported)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the results table to this file")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for key, value in refenv.offline_env(workdir).items():
        os.environ[key] = value
    images = odd_images(workdir)
    rows: List[Dict[str, object]] = []
    for name in args.scorers.split(","):
        rows.extend(compare(name, SCORERS[name], workdir, images, args.dtypes.split(","))["rows"])
    table = markdown(rows)
    print(table)
    (workdir / "parity.json").write_text(json.dumps(rows, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    failures = [
        r for r in rows
        if r["dtype"] == "fp32" and (r["max_abs_diff"] > TOLERANCE or not r["same_ranking"])
    ]
    gaps = [r for r in rows if r["dtype"] == "fp32" and r["api"] == "rank" and r["reference_min_gap"] <= MIN_GAP]
    if gaps:
        print(f"note: {len(gaps)} reference rows have rewards closer than {MIN_GAP}", file=sys.stderr)
    print(f"fp32 parity: {'PASS' if not failures else 'FAIL'} "
          f"(tolerance {TOLERANCE}, {len(rows)} rows, {len(failures)} failing)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
