"""imscore against ours in one process, by CPU time: for a machine too busy for wall time.

    IMAGEREWARD_BERT_VOCAB=... HF_HOME=<offline HF cache with bert-base-uncased> \\
    ~/.cache/imagereward-bench/imscorevenv/bin/python benchmarks/imscore_cpu_time.py \\
        .bench/speed/ImageReward.pt --images 8 --threads 1

Runs in imscore's environment (see refenv.py) with our ``src`` put on the path, so
both models run on the same torch build, in the same process, on the same
checkpoint; the calls alternate between the sides and each side's best of
``--repeats`` counts. Three workloads, one prompt: ``e2e`` (decoded 512 px images:
imscore's batched ``score`` on a [0, 1] tensor, our ``inference_rank`` on PIL images),
``model`` (pre-made 224 px tensors in [0, 1]: imscore's ``score``, our
``score_tensors``) and ``vit`` (the image encoder alone). CPU time counts every thread
of the process; with one thread it is the work done, which other load on a shared
machine disturbs far less than wall time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,bf16")
    args = parser.parse_args()

    import numpy as np
    import torch
    from imscore.imreward.model import ImageReward as Imscore
    from PIL import Image

    import imagereward
    from speed import batch_images

    torch.set_num_threads(args.threads)
    files = batch_images(Path(args.checkpoint).resolve().parent, args.images)
    pil = [Image.open(path).convert("RGB") for path in files]
    decoded = torch.from_numpy(np.stack([np.asarray(image) for image in pil]))
    decoded = decoded.permute(0, 3, 1, 2).float().div(255)
    pixels = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = [PROMPT] * args.images
    out = {"torch": torch.__version__, "images": args.images, "threads": args.threads}
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        theirs = Imscore()
        theirs.load_state_dict(state, strict=True)
        theirs = theirs.to(dtype).eval()
        ours = imagereward.load(args.checkpoint, device="cpu", dtype=dtype)
        workloads = {
            "e2e": (lambda: theirs.score(decoded.to(dtype), prompts).float().reshape(-1),
                    lambda: torch.tensor(ours.inference_rank(PROMPT, pil)[1])),
            "model": (lambda: theirs.score(pixels.to(dtype), prompts).float().reshape(-1),
                      lambda: ours.score_tensors(pixels, PROMPT).float()),
            "vit": (lambda: theirs.blip.visual_encoder(pixels.to(dtype)),
                    lambda: ours.encode_images(pixels.to(dtype))),
        }
        row = {}
        with torch.inference_mode():
            for workload, (imscore_call, ours_call) in workloads.items():
                if workload != "vit":
                    row[f"{workload}_max_abs_diff"] = float(
                        (imscore_call() - ours_call()).abs().max())  # also the warm-up
                for _ in range(args.repeats):
                    for side, call in (("imscore", imscore_call), ("ours", ours_call)):
                        start = time.process_time()
                        call()
                        seconds = time.process_time() - start
                        key = f"{workload}_{side}_cpu_seconds"
                        row[key] = min(row.get(key, float("inf")), seconds)
                row[f"{workload}_ratio"] = (row[f"{workload}_imscore_cpu_seconds"]
                                            / row[f"{workload}_ours_cpu_seconds"])
        out[name] = row
        print(name, json.dumps(row), file=sys.stderr, flush=True)
        del theirs, ours
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
