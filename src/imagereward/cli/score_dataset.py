"""``imagereward score-dataset``: score a whole data set on Ray Data, restartable."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_PARTIAL,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    add_general_options,
    apply_offline,
    model_list,
    positive_int,
    split_list,
)

EPILOG = f"""\
examples:
  imagereward score-dataset images/prompts.jsonl --output scores/
  imagereward score-dataset shards/ --output scores/ --models ImageReward-v1.0,CLIP,Aesthetic
  imagereward score-dataset s3-mounted/pickapic/ --output out/ --prompt-column caption \\
      --image-column jpg_0 --id-column image_0_uid --keep-columns ranking_id
  imagereward score-dataset data/ --output out/ --address auto --actors 8 --gpus-per-actor 1 --dtype bf16

inputs (a file or a folder of them, one kind):
  .jsonl / .csv  manifests: a prompt and an image path (relative to the manifest) per row
  .parquet       image bytes, a struct with 'bytes' (HF datasets, e.g. ImageRewardDB) or paths
  .tar           webdataset shards: KEY.jpg|png|webp with KEY.txt or KEY.json (the prompt)

output (in --output): part-*.parquet with id, prompt, one column per model, error
(null when fine) and the --keep-columns; read them with pyarrow.parquet.read_table(DIR).
Run the same command again after an interruption: finished fragments are kept,
the rest are scored, every input row ends up in the output exactly once.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score-dataset",
        help="score a whole data set on Ray Data (local or a cluster), restartable",
        description="Score every (prompt, image) row of a data set with one or more reward "
        "models on Ray Data, writing parquet part files that survive crashes and reruns.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", help="a manifest, parquet file, tar shard, or a folder of them")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the part files")
    parser.add_argument(
        "--models", type=model_list, default=[IMAGEREWARD], metavar="LIST",
        help="comma-separated registered scorers (see 'imagereward models'), or 'all' "
        "(default: ImageReward-v1.0)",
    )
    columns = parser.add_argument_group("input columns")
    columns.add_argument("--prompt-column", default="prompt", metavar="NAME",
                         help="prompt column, or field of KEY.json (default: %(default)s)")
    columns.add_argument("--image-column", default="image", metavar="NAME",
                         help="image path / bytes column (default: %(default)s)")
    columns.add_argument("--id-column", metavar="NAME",
                         help="sample id column (default: 'id' if present, else the image path, "
                         "the tar key or FILE:ROW)")
    columns.add_argument("--keep-columns", type=split_list, default=[], metavar="LIST",
                         help="input columns copied to the output, comma-separated")
    columns.add_argument("--fragment-rows", type=positive_int, default=10_000, metavar="N",
                         help="rows per restartable fragment of manifests and parquet files "
                         "(default: %(default)s)")
    cluster = parser.add_argument_group("Ray")
    cluster.add_argument("--address", metavar="ADDR",
                         help="Ray cluster to run on: 'auto' (the one this machine belongs to) or "
                         "ray://HEAD:10001 (default: start Ray on this machine)")
    cluster.add_argument("--actors", type=positive_int, default=1, metavar="N",
                         help="scoring actors, each loading the models once (default: %(default)s)")
    cluster.add_argument("--gpus-per-actor", type=float, metavar="G",
                         help="GPUs per actor; 0 scores on CPUs (default: 1 if the cluster has GPUs, else 0)")
    cluster.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C",
                         help="CPUs Ray reserves per actor (default: %(default)s)")
    cluster.add_argument("--threads-per-actor", type=positive_int, metavar="T",
                         help="torch threads in each actor on CPUs (default: --cpus-per-actor)")
    cluster.add_argument("--decode-cpus", type=float, default=1.0, metavar="C",
                         help="CPUs per decoding task (default: %(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                       help="local weights of a model (MODEL=PATH; a bare PATH is for the only model "
                       "in --models); repeat for several models; must exist on every node")
    model.add_argument("--clip-checkpoint", metavar="PATH",
                       help="for Aesthetic: a local OpenAI CLIP ViT-L-14.pt for its image encoder")
    model.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="precision of the encoders; reward heads stay fp32 (default: %(default)s)")
    model.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                       help="images per forward pass and per stage call (default: %(default)s)")
    model.add_argument("--download-root", metavar="DIR",
                       help="where each node keeps downloaded weights (default: the caches)")
    model.add_argument("--offline", action="store_true", help="never use the network")
    add_general_options(parser)
    parser.set_defaults(func=run_score_dataset, parser=parser)


def _checkpoints(args: argparse.Namespace) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for value in args.checkpoint:
        name, sep, path = value.partition("=")
        if not sep:
            if len(args.models) != 1:
                args.parser.error("--checkpoint PATH without MODEL= needs exactly one model in --models")
            name, path = args.models[0], value
        else:
            from .common import model_name

            try:
                name = model_name(name)
            except argparse.ArgumentTypeError as error:
                args.parser.error(f"--checkpoint: {error}")
        if name not in args.models:
            args.parser.error(f"--checkpoint is for {name}, which is not in --models")
        found[name] = path
    return found


def _specs(args: argparse.Namespace) -> List[Any]:
    from ..scale import ModelSpec

    if args.clip_checkpoint is not None and "Aesthetic" not in args.models:
        args.parser.error("--clip-checkpoint is for Aesthetic, which is not in --models")
    checkpoints = _checkpoints(args)
    specs = []
    for name in args.models:
        options: Dict[str, Any] = {}
        if args.download_root:
            options["download_root"] = args.download_root
        if name == "Aesthetic" and args.clip_checkpoint:
            options["files"] = {"clip": args.clip_checkpoint}
        specs.append(ModelSpec(name, checkpoints.get(name), options))
    return specs


def run_score_dataset(args: argparse.Namespace) -> int:
    from ..scale import Columns, DatasetInputError, DatasetJob, RayMissingError, require_ray

    apply_offline(args)
    columns = Columns(id=args.id_column, prompt=args.prompt_column, image=args.image_column,
                      keep=tuple(args.keep_columns))
    job = DatasetJob(
        input=args.input, output=args.output, models=_specs(args), columns=columns,
        address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor, threads_per_actor=args.threads_per_actor,
        decode_cpus=args.decode_cpus, batch_size=args.batch_size,
        dtype=None if args.dtype == "fp32" else args.dtype, fragment_rows=args.fragment_rows,
        progress=not args.no_progress,
    )
    try:
        job.plan()  # a bad input fails here, before Ray starts
        job.open_ledger()
        require_ray()
    except DatasetInputError as error:
        raise CliError(str(error), EXIT_INPUT) from None
    except RayMissingError as error:
        raise CliError(str(error), EXIT_FAILURE) from None
    summary = job.run()
    print(f"imagereward: {summary.line()}", file=sys.stderr)
    if not summary.complete:
        return EXIT_FAILURE
    return EXIT_PARTIAL if summary.errors else 0
