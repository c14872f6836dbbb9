"""Where the text encoder's time goes: torch.profiler over ImageReward's text side.

    python benchmarks/profile_text.py CHECKPOINT [--dtype fp32] [--images 8] [--plain]

Runs the text encoder with its cross-attention for one prompt against ``--images``
random image-token sets (the shape ``inference_rank`` gives it), times it by CPU time
(less disturbed by other load than wall time) and prints the operators that take the
time. ``--plain`` runs the full computation instead of the ``[CLS]``-only one (all 35
positions, keys and values projected) and plain ``F.linear`` instead of oneDNN, the
computation before the fast paths, for a side-by-side profile.
"""

from __future__ import annotations

import argparse
import os
import time

PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    if args.plain:
        os.environ["IMAGEREWARD_ONEDNN_LINEAR"] = "0"

    import torch
    from torch.profiler import ProfilerActivity, profile

    import imagereward
    from imagereward.models.med import BertSelfAttention

    if args.plain:  # keys and values projected, as the original computes them
        BertSelfAttention.fold_pays = lambda self, rows, context: False
    torch.set_num_threads(args.threads)
    model = imagereward.load(args.checkpoint, device="cpu", dtype=args.dtype)
    tokens = model.tokenizer([PROMPT])
    ids = tokens["input_ids"].expand(args.images, -1)
    mask = tokens["attention_mask"].expand(args.images, -1)
    generator = torch.Generator().manual_seed(0)
    image_tokens = torch.randn(args.images, 197, 1024, generator=generator).to(model.compute_dtype)
    text = model.blip.text_encoder

    def run() -> torch.Tensor:
        if args.plain:
            return text(ids, mask, image_tokens)[:, 0]
        return text(ids, mask, image_tokens, cls_only=True)

    with torch.inference_mode():
        run()
        cpu = []
        for _ in range(args.repeats):
            start = time.process_time()
            run()
            cpu.append(time.process_time() - start)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run()
    path = "plain" if args.plain else "cls_only + oneDNN"
    print(f"text encoder, {args.images} pairs, {args.dtype}, {path}: "
          f"best CPU time {min(cpu):.3f} s over {args.repeats} calls ({args.threads} threads, "
          f"torch {torch.__version__})")
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=36,
        max_shapes_column_width=70))


if __name__ == "__main__":
    main()
