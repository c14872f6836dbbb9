"""``imagereward score-dataset``: score a whole data set on Ray Data, restartable."""

from __future__ import annotations

import argparse
import json
from typing import Any, List

from .common import (
    note,
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_PARTIAL,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    add_download_options,
    add_dtype_option,
    add_int8_option,
    add_file_options,
    add_general_options,
    apply_offline,
    model_files,
    model_spec,
    model_list,
    non_negative_float,
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
the rest are scored, every input row ends up in the output exactly once. Add
--retry-errors to score again the fragments whose part files hold rows with an
error (say, images that were missing then): each such fragment is scored whole.

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
                         "ray://HEAD:10001 (default: RAY_ADDRESS, else a private Ray on this machine "
                         "for this job only, never a cluster that happens to run here)")
    cluster.add_argument("--actors", type=positive_int, default=1, metavar="N",
                         help="scoring actors, each loading the models once (default: %(default)s)")
    cluster.add_argument("--gpus-per-actor", type=non_negative_float, metavar="G",
                         help="GPUs per actor; 0 scores on CPUs (default: 1 if the cluster has GPUs, else 0)")
    cluster.add_argument("--cpus-per-actor", type=non_negative_float, default=1.0, metavar="C",
                         help="CPUs Ray reserves per actor (default: %(default)s)")
    cluster.add_argument("--threads-per-actor", type=positive_int, metavar="T",
                         help="torch threads in each actor on CPUs (default: on a private Ray, the CPUs this "
                         "machine gives the job, shared among the actors; on a cluster, --cpus-per-actor)")
    cluster.add_argument("--decode-cpus", type=non_negative_float, default=1.0, metavar="C",
                         help="CPUs per decoding task (default: %(default)s)")
    model = parser.add_argument_group("model")
    add_file_options(model, "local files of the models (a bare PATH is the only model's "
                     "weights); they must exist on every node")
    add_dtype_option(model)
    add_int8_option(model)
    model.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                       help="images per forward pass and per stage call (default: %(default)s)")
    add_download_options(model)
    parser.add_argument("--retry-errors", action="store_true",
                        help="score again the finished fragments whose part files hold rows with an "
                        "error (each such fragment whole)")
    parser.add_argument("--json", action="store_true",
                        help="also print the summary as one JSON object on stdout (for scripts)")
    add_general_options(parser)
    parser.set_defaults(func=run_score_dataset, parser=parser)


def _specs(args: argparse.Namespace) -> List[Any]:
    files = model_files(args, args.models, args.parser)
    return [model_spec(args, name, files[name]).replace(device=None, dtype=None) for name in args.models]


def run_score_dataset(args: argparse.Namespace) -> int:
    try:
        from ..runners.dataset import Columns, DatasetInputError, DatasetJob, ExtraMissingError, require_ray
    except ImportError as error:
        raise CliError(f"scoring data sets needs Ray Data and pyarrow ({error}); install them with: "
                       "pip install 'imagereward[ray]'", EXIT_FAILURE) from None

    apply_offline(args)
    columns = Columns(id=args.id_column, prompt=args.prompt_column, image=args.image_column,
                      keep=tuple(args.keep_columns))
    job = DatasetJob(
        input=args.input, output=args.output, models=_specs(args), columns=columns,
        address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, threads_per_actor=args.threads_per_actor,
        decode_cpus=args.decode_cpus, batch_size=args.batch_size,
        dtype=None if args.dtype == "fp32" else args.dtype, fragment_rows=args.fragment_rows,
        progress=not args.no_progress, retry_errors=args.retry_errors,
    )
    try:
        job.plan()  # a bad input fails here, before Ray starts
        job.open_ledger()
        require_ray()
    except DatasetInputError as error:
        raise CliError(str(error), EXIT_INPUT) from None
    except ExtraMissingError as error:
        raise CliError(str(error), EXIT_FAILURE) from None
    note(args, f"imagereward: scoring {args.input} on {job.describe_ray()}")
    summary = job.run()
    note(args, f"imagereward: {summary.line()}")
    if args.json:
        print(json.dumps(summary.to_dict()), flush=True)
    if not summary.complete:
        return EXIT_FAILURE
    return EXIT_PARTIAL if summary.errors else 0
