"""``imagereward score`` and ``imagereward rank``: rewards of images for a prompt."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

from .common import (
    note,
    EXIT_CODES_HELP,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    add_general_options,
    add_model_options,
    apply_offline,
    load_scorer,
    missing_images,
    model_files,
    model_spec,
    model_name,
    model_names_help,
)

# Table headers show at most this many characters of a prompt (JSON and CSV keep it whole).
HEADER_PROMPT_CHARS = 80

SCORE_EPILOG = f"""\
examples:
  imagereward score --prompt "a red bicycle" a.png b.png
  imagereward score --prompt "a red bicycle" a.png --json
  imagereward score -p "a red bicycle" -p "a blue bicycle" a.png b.png
  imagereward score --model CLIP --prompt "a red bicycle" *.png --csv > clip.csv
  imagereward score --input pairs.jsonl --output scores.jsonl
  imagereward score --input pairs.jsonl --output scores.jsonl --resume
  imagereward score --input pairs.jsonl --output scores.jsonl --retry-errors

batch jobs (--input):
  Each input line is a JSON object with "prompt" and "image" (a path; relative
  paths are taken from --image-root, default the current folder); other fields
  are copied to the output. Each output line is the input record plus "reward",
  or plus "error" when that image could not be scored. Results are appended and
  flushed batch by batch; after an interruption, --resume skips every
  (prompt, image) pair already in the output. --retry-errors resumes and scores
  again the pairs whose output records are errors (say, images that were missing
  then): their records are taken out of the output and the new ones appended.

{EXIT_CODES_HELP}"""

RANK_EPILOG = f"""\
examples:
  imagereward rank --prompt "a red bicycle" a.png b.png c.png
  imagereward rank --prompt "a red bicycle" *.png --json
  imagereward rank -p "a red bicycle" -p "a bicycle at night" *.png

Several --prompt options rank the same images for each prompt; every image is
decoded and encoded once for all of them.

{EXIT_CODES_HELP}"""

CHECKPOINT_HELP = (
    "local weights instead of downloading: for ImageReward an ImageReward.pt, a "
    ".safetensors file or a folder written by save_pretrained; for a baseline its "
    "original weight file"
)


def register(subparsers: Any) -> None:
    score = subparsers.add_parser(
        "score",
        help="reward of each image for a prompt, or of a JSONL file of pairs",
        description="Reward of each image for a prompt (higher is better), or of every "
        "(prompt, image) pair of a JSONL file.",
        epilog=SCORE_EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_single_options(score)
    batch = score.add_argument_group("batch job")
    batch.add_argument("--input", metavar="FILE", help="JSONL file of {\"prompt\", \"image\"} records")
    batch.add_argument("--output", metavar="FILE", help="JSONL file the results are appended to")
    batch.add_argument(
        "--resume", action="store_true",
        help="continue an existing --output: skip pairs already in it",
    )
    batch.add_argument(
        "--retry-errors", action="store_true",
        help="--resume, and score again the pairs whose records in --output are errors",
    )
    batch.add_argument(
        "--overwrite", action="store_true", help="start --output afresh if it exists"
    )
    batch.add_argument(
        "--image-root", metavar="DIR", default="",
        help="folder that relative image paths in --input are taken from (default: current folder)",
    )
    _add_model_options(score)
    add_general_options(score)
    score.set_defaults(func=run_score, parser=score)

    rank = subparsers.add_parser(
        "rank",
        help="rank images for a prompt (1 = best)",
        description="Rank images for a prompt by reward (rank 1 = highest reward).",
        epilog=RANK_EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_single_options(rank)
    _add_model_options(rank)
    add_general_options(rank)
    rank.set_defaults(func=run_rank, parser=rank)


def _add_single_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files to score")
    parser.add_argument(
        "--prompt", "-p", action="append",
        help="the text prompt the images were generated for; repeat it to score the "
        "images for several prompts (each image is encoded once)",
    )
    parser.add_argument(
        "--model", "-m", type=model_name, default=IMAGEREWARD,
        help=f"the scorer: {model_names_help()} (case-insensitive; default: %(default)s)",
    )
    parser.add_argument(
        "--skip-errors", action="store_true",
        help="score the images that can be read; an error line on stderr for each that cannot "
        "(exit 4 when any was skipped)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of records")
    output.add_argument("--csv", action="store_true", help="print CSV with a header row")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, CHECKPOINT_HELP)


def _spec(args: argparse.Namespace) -> Any:
    """The model run, with its local files from --checkpoint / --clip-checkpoint."""
    files = model_files(args, [args.model], args.parser)
    return model_spec(args, args.model, files[args.model])


def _load(args: argparse.Namespace) -> Any:
    return load_scorer(_spec(args))


def _label(args: argparse.Namespace) -> str:
    return _spec(args).label


def _check_single(args: argparse.Namespace) -> None:
    if args.prompt is None:
        args.parser.error("--prompt is required (or use --input for a batch job)")
    if not args.images:
        args.parser.error("give at least one IMAGE")
    error = missing_images(args.images)
    if error is not None and not args.skip_errors:
        raise error


def run_score(args: argparse.Namespace) -> int:
    apply_offline(args)
    if args.input is not None:
        return _run_batch(args)
    if args.output is not None or args.resume or args.retry_errors:
        args.parser.error("--output, --resume and --retry-errors need --input")
    images, rows = _reward_rows(args)
    groups = [
        [{"prompt": prompt, "image": image, "reward": reward} for image, reward in zip(images, rewards)]
        for prompt, rewards in zip(args.prompt, rows)
    ]
    _emit(groups, ["reward", "image"], args)
    return EXIT_PARTIAL if len(images) < len(args.images) else 0


def run_rank(args: argparse.Namespace) -> int:
    from ..scoring.base import ranks_from_rewards

    apply_offline(args)
    groups: List[List[Dict[str, Any]]] = []
    images, rows = _reward_rows(args)
    for prompt, rewards in zip(args.prompt, rows):
        ranked = zip(images, ranks_from_rewards(rewards), rewards)
        groups.append(sorted(
            (
                {"rank": rank, "prompt": prompt, "image": image, "reward": reward}
                for image, rank, reward in ranked
            ),
            key=lambda r: r["rank"],
        ))
    _emit(groups, ["rank", "reward", "image"], args)
    return EXIT_PARTIAL if len(images) < len(args.images) else 0


def _reward_rows(args: argparse.Namespace) -> Tuple[List[str], List[List[float]]]:
    """The images scored and, for each ``--prompt`` as given, their rewards.

    Each image is decoded once (the item pipeline) and encoded once for every prompt; a
    prompt given several times is scored once and reported each time. A bad image stops
    the command (exit 3), or with ``--skip-errors`` gets an error line on stderr and is
    left out (exit 4).
    """
    _check_single(args)
    import torch

    from ..errors import InputError
    from ..items import collate_pixels, decode_all

    scorer = _load(args)
    chunk = 4 * args.batch_size  # images per step: keeps decoding a few batches ahead
    progress = _progress_bar(args, len(args.images))
    kept: List[str] = []
    columns = []
    try:
        for start in range(0, len(args.images), chunk):
            part = list(args.images[start : start + chunk])
            decoded = decode_all(scorer.preprocess, part, scorer.limits, scorer.num_workers)
            good = []
            for image, pixels in zip(part, decoded):
                if isinstance(pixels, InputError):
                    if not args.skip_errors:
                        raise CliError(str(pixels), EXIT_INPUT)
                    print(f"imagereward: error: {pixels}", file=sys.stderr)
                else:
                    kept.append(image)
                    good.append(pixels)
            if good:
                columns.append(scorer.score_pixel_matrix(args.prompt, collate_pixels(good)))
            progress.update(len(part))
    finally:
        progress.close()
    if not columns:
        raise CliError("no image could be scored", EXIT_INPUT)
    return kept, torch.cat(columns, dim=1).tolist()


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    """Progress on stderr when there is more than one batch and not --no-progress: a bar on a
    terminal, periodic lines otherwise."""
    from ..progress import progress

    return progress(total, "image", "scoring", total > args.batch_size and not args.no_progress)


def _emit(groups: List[List[Dict[str, Any]]], columns: Sequence[str], args: argparse.Namespace) -> None:
    """Records grouped by prompt (one group per --prompt given), as JSON, CSV or tables."""
    records = [record for group in groups for record in group]
    if args.json:
        text = json.dumps(records, indent=2, ensure_ascii=False)
    elif args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue().rstrip("\n")
    else:
        label = _label(args)
        text = "\n\n".join(format_table(group, columns, label, group[0]["prompt"]) for group in groups)
    print(text)


def shorten(text: str, limit: int = HEADER_PROMPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (whitespace runs collapsed)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def format_table(
    records: Sequence[Dict[str, Any]], columns: Sequence[str], model: str, prompt: str
) -> str:
    """A plain aligned table for people; rewards with 4 decimals, long prompts shortened."""
    def cell(record: Dict[str, Any], column: str) -> str:
        value = record[column]
        return f"{value:.4f}" if column == "reward" else str(value)

    rows = [[cell(r, c) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    last = len(columns) - 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c if i == last else c.rjust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return "\n".join([f"{model} | prompt: {shorten(prompt)}", line(columns), *(line(r) for r in rows)])


def _run_batch(args: argparse.Namespace) -> int:
    from ..runners.batch import BatchJob
    from ..errors import JobFileError

    if args.prompt is not None or args.images:
        args.parser.error("--input cannot be combined with --prompt or IMAGE arguments")
    if args.json or args.csv:
        args.parser.error("--json/--csv apply to single runs; --output is always JSONL")
    if args.output is None:
        args.parser.error("--input needs --output")
    resume = args.resume or args.retry_errors
    if resume and args.overwrite:
        args.parser.error("--resume (or --retry-errors) and --overwrite exclude each other")
    if os.path.exists(args.output) and os.path.getsize(args.output) > 0:
        if not (resume or args.overwrite):
            args.parser.error(
                f"{args.output} exists: pass --resume to continue it or --overwrite to replace it"
            )
    job = BatchJob(
        input_path=args.input,
        output_path=args.output,
        image_root=args.image_root,
        batch_size=args.batch_size,
        resume=resume,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
    )
    try:
        stats = job.run(lambda: _load(args))
    except JobFileError as error:
        raise CliError(str(error), EXIT_INPUT) from error
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted: results so far are saved in {args.output}; "
            "run again with --resume to continue",
            EXIT_INTERRUPTED,
        ) from None
    retried = f" ({stats.retried} error record(s) taken out to retry)" if args.retry_errors else ""
    summary = (
        f"imagereward: {stats.scored} pairs scored, {stats.failed} failed, "
        f"{stats.skipped} skipped (already done){retried} -> {args.output}"
    )
    if stats.errors:
        summary += f"; it holds {stats.errors} error record(s)"
    note(args, summary)
    return EXIT_PARTIAL if stats.errors else 0
