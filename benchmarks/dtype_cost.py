"""What bf16, fp16 and int8 cost in accuracy, per scorer, against fp32, on the fixture images.

    flock /tmp/imagereward-cpu.lock python benchmarks/dtype_cost.py [--scorers all] [--dtypes bf16,fp16,int8]

Each registered scorer is written with full-size random weights in its original file
format (ImageReward's BLIP ViT-L/16 + BERT, BLIP-large, OpenAI's ViT-L/14 for CLIP and
Aesthetic, OpenCLIP's ViT-H/14 for PickScore and HPSv2/HPSv2.1), loaded in fp32 and in
each half precision (encoders in that dtype, heads in fp32: what ``load(dtype=...)``
and ``serve --dtype`` do; int8: ``--int8`` on the bf16 model, calibrated on 32 other
synthetic images), and scores the parity set of ``fixtures.py`` (the four
example images and ten odd ones, every odd prompt) with ``score_matrix``. Reported per
scorer and dtype: max and mean |half - fp32|, the fp32 scores' spread (std), the
error relative to that spread, the share of image pairs each prompt orders the same,
and the seconds taken. Random weights are harsh on half precision (their features
differ little between images, so a small error moves ranks that trained weights
would keep); the figures bound the cost, they do not predict it for trained weights.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from fixtures import PROMPTS, calibration_pairs, odd_images  # noqa: E402
from helpers import BERT_VOCAB, CLIP_BPE, random_state_dict  # noqa: E402
from serve import machine  # noqa: E402

Files = Tuple[Dict[str, str], Dict[str, Any]]


def _clip_state(config: Any, seed: int) -> Dict[str, torch.Tensor]:
    from test_prefmodels import random_clip

    return random_clip(config, seed=seed).state_dict()


def write_imagereward(folder: Path) -> Files:
    from imagereward.config import ImageRewardConfig

    torch.save(random_state_dict(ImageRewardConfig(), seed=1), folder / "ImageReward.pt")
    return {"weights": str(folder / "ImageReward.pt")}, {}


def write_blip(folder: Path) -> Files:
    from imagereward.config import BLIPScoreConfig
    from test_baselines import blip_pretrain_state

    torch.save({"model": blip_pretrain_state(BLIPScoreConfig(), seed=2)}, folder / "model_large.pth")
    return {"weights": str(folder / "model_large.pth")}, {}


def write_clip(folder: Path) -> Files:
    from imagereward.config import CLIPConfig

    torch.save(_clip_state(CLIPConfig(), 3), folder / "ViT-L-14.pt")
    return {"weights": str(folder / "ViT-L-14.pt")}, {}


def write_aesthetic(folder: Path) -> Files:
    from imagereward.models.head import RewardHead

    clip, _ = write_clip(folder)
    torch.manual_seed(4)
    head = RewardHead(768)
    head.reset_parameters()
    torch.save(head.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    return {"weights": str(folder / "sac+logos+ava1-l14-linearMSE.pth"), "clip": clip["weights"]}, {}


def write_pickscore(folder: Path) -> Files:
    from safetensors.torch import save_file

    from imagereward.config import openclip_vit_h_14
    from test_prefmodels import random_clip, to_hf

    save_file(to_hf(random_clip(openclip_vit_h_14(), seed=5)), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return {"weights": str(folder / "model.safetensors")}, {}


def write_hps(file: str, seed: int) -> Callable[[Path], Files]:
    def write(folder: Path) -> Files:
        from imagereward.config import openclip_vit_h_14

        torch.save({"state_dict": _clip_state(openclip_vit_h_14(), seed)}, folder / file)
        return {"weights": str(folder / file)}, {}

    return write


WRITERS: Dict[str, Callable[[Path], Files]] = {
    "ImageReward-v1.0": write_imagereward,
    "CLIP": write_clip,
    "BLIP": write_blip,
    "Aesthetic": write_aesthetic,
    "PickScore": write_pickscore,
    "HPSv2": write_hps("HPS_v2_compressed.pt", 6),
    "HPSv2.1": write_hps("HPS_v2.1_compressed.pt", 7),
}


def written_files(name: str, workdir: Path) -> Dict[str, str]:
    """The files of scorer ``name`` under ``workdir / name``, written by its writer the first
    time only (full-size checkpoints take minutes) and listed in ``files.json`` there."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "files.json"
    if not record.is_file():
        record.write_text(json.dumps(WRITERS[name](folder)[0]))
    return json.loads(record.read_text())


def order_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of image pairs, over all prompts, that ``a`` and ``b`` order the same way."""
    same = total = 0
    for row_a, row_b in zip(a, b):
        for i, j in itertools.combinations(range(len(row_a)), 2):
            total += 1
            same += np.sign(row_a[i] - row_a[j]) == np.sign(row_b[i] - row_b[j])
    return same / total if total else 1.0


def measure(name: str, files: Dict[str, str], images: List[str], dtypes: List[str], threads: int,
            calibration: Tuple[List[str], List[str]]) -> Dict[str, Any]:
    import imagereward

    torch.set_num_threads(threads)
    results: Dict[str, Any] = {}
    reference = None
    for dtype in ["fp32", *dtypes]:
        model = imagereward.load(name, files=files, device="cpu", batch_size=8,
                                 dtype={"fp32": None, "int8": "bf16"}.get(dtype, dtype))
        if dtype == "int8":  # int8 layers on the bf16 model, calibrated on other images
            from imagereward.int8 import calibrate, quantize_int8

            quantize_int8(model, calibrate(model, *calibration))
        model.score_matrix(PROMPTS[:1], images[:2])  # warm-up
        start = time.perf_counter()
        scores = model.score_matrix(PROMPTS, images).double().numpy()
        seconds = time.perf_counter() - start
        del model
        gc.collect()
        if reference is None:
            reference = scores
            results["fp32"] = {"seconds": seconds, "std": float(scores.std())}
            continue
        difference = np.abs(scores - reference)
        results[dtype] = {
            "seconds": seconds,
            "max_abs": float(difference.max()),
            "mean_abs": float(difference.mean()),
            "mean_abs_over_std": float(difference.mean() / reference.std()),
            "order_agreement": order_agreement(reference, scores),
            "finite": bool(np.isfinite(scores).all()),
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorers", default="all", help="comma list of registered scorers, or all")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma list of bf16, fp16 and int8 "
                        "(int8 layers on the bf16 model, calibrated on 32 other synthetic images)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from imagereward.tokenizers.clip_bpe import BPE_ENV

    os.environ.update({"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE),
                       "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1"})
    names = list(WRITERS) if args.scorers == "all" else [s.strip() for s in args.scorers.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    # Full-size checkpoints of seven scorers take about 20 GB: a folder made here goes at the end.
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="imagereward-dtype-cost-")))
        images = odd_images(workdir / "images")
        calibration = calibration_pairs(workdir / "calibration", 32)
        report: Dict[str, Any] = {"machine": machine(args.threads), "images": len(images), "prompts": len(PROMPTS),
                                  "scorers": {}}
        for name in names:
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            files, _ = WRITERS[name](folder)
            gc.collect()
            report["scorers"][name] = measure(name, files, images, dtypes, args.threads, calibration)
            print(json.dumps({name: report["scorers"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
