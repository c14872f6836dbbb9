"""``imagereward serve``: the reward server on Ray Serve, on this machine or a Ray cluster."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading
from typing import Any, Dict, List, Optional

from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_USAGE,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    check_scorer,
    check_spec_files,
    add_download_options,
    add_dtype_option,
    add_int8_option,
    add_file_options,
    add_general_options,
    model_files,
    model_list,
    model_name,
    model_names_help,
    positive_int,
)

EPILOG = f"""\
examples:
  imagereward serve --checkpoint ImageReward.pt
  imagereward serve --models ImageReward-v1.0,PickScore,HPSv2.1 --dtype bf16
  imagereward serve --models PickScore,HPSv2.1 --stats stats.json --normalize zscore
  imagereward serve --model CLIP --replicas 2 --max-batch-size 64
  IMAGEREWARD_API_KEY=secret imagereward serve --host 0.0.0.0 --api-key-env IMAGEREWARD_API_KEY
  imagereward serve --address auto --replicas 8 --gpus-per-replica 1   # on a Ray cluster

endpoints: POST /score, /rank, /score_matrix (one model), /rewards (several, weighted);
GET /healthz, /readyz, /metrics;
the OpenAPI schema is at /openapi.json and /docs. Stop with Ctrl-C or SIGTERM:
requests already accepted are finished first. See docs/serve.md.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="reward server for RL trainers: one or several models (Ray Serve, dynamic batching)",
        description="Serve rewards over HTTP with dynamic batching across concurrent requests: one "
        "model, or several behind one endpoint, each image decoded once per request.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("models")
    choice = model.add_mutually_exclusive_group()
    choice.add_argument("--model", type=model_name,
                        help=f"a registered scorer: {model_names_help()} (default: {IMAGEREWARD})")
    choice.add_argument("--models", type=model_list, metavar="A,B,...",
                        help="several registered scorers, one deployment each (all: every one); "
                        "the first answers /score, /rank and /score_matrix unless a request names another")
    add_file_options(model, "local files instead of downloading (a bare PATH is the only model's weights)")
    add_dtype_option(model, default=None)
    add_int8_option(model)
    add_download_options(model)
    model.add_argument("--stats", metavar="FILE",
                       help="reward statistics (imagereward reward-stats) for z-scores on /rewards")
    model.add_argument("--normalize", choices=("none", "zscore"),
                       help="scale of each model's scores on /rewards unless a request says "
                       "(default: none; zscore needs --stats)")
    model.add_argument("--settings", metavar="FILE",
                       help="server settings as JSON or YAML (the fields of build_app's arguments, per-model "
                       "entries under models:); options given here override its top-level fields")

    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    http.add_argument("--port", type=port_number, default=8000, help="1 to 65535 (default: %(default)s)")
    http.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                      help="on Ctrl-C or SIGTERM, how long accepted requests may take to be answered "
                      "before the server exits (default: %(default)s)")
    http.add_argument("--api-key-env", metavar="NAME",
                      help="require the API key held by environment variable NAME "
                      "(Authorization: Bearer KEY or X-API-Key: KEY)")

    batching = parser.add_argument_group("replicas and batching (of every model)")
    batching.add_argument("--replicas", type=positive_int, help="replicas of each model (default: 1)")
    batching.add_argument("--gpus-per-replica", type=float, metavar="N",
                          help="GPUs per replica, fractions to share a GPU between models "
                          "(default: 1 when the Ray cluster has GPUs, else 0)")
    batching.add_argument("--cpus-per-replica", type=float, metavar="N",
                          help="CPUs per replica, also its torch threads (default: on this machine, an "
                          "even share of the CPUs the ingress leaves; on a cluster, 1)")
    batching.add_argument("--max-batch-size", type=positive_int, metavar="N",
                          help="pairs per forward pass (default: 32)")
    batching.add_argument("--batch-wait-ms", type=float, metavar="MS",
                          help="how long a batch waits to fill up (default: 10)")
    batching.add_argument("--address", metavar="ADDRESS",
                          help="Ray cluster to join (e.g. auto, or ray://HOST:10001); default: RAY_ADDRESS, "
                          "else a new Ray on this machine")

    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-pairs", type=positive_int, metavar="N",
                        help="pairs per request; more get 413 (default: 256)")
    limits.add_argument("--max-body-mb", type=positive_int, metavar="MB",
                        help="request body size; larger get 413 (default: 128)")
    limits.add_argument("--max-queue", type=positive_int, metavar="N",
                        help="pairs waiting per model replica; more get 429 (default: 1024)")
    limits.add_argument("--timeout", type=float, metavar="S",
                        help="per-request timeout; slower requests get 504 (default: 60)")
    add_general_options(parser)
    parser.set_defaults(func=run, parser=parser)


def port_number(value: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1 to 65535)")
    return port


def check_port_free(host: str, port: int) -> None:
    """Exit 3 before Ray starts when the port cannot be bound (in use, or a bad host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = "is in use" if error.errno == errno.EADDRINUSE else f"cannot be bound: {error.strerror}"
            raise CliError(f"port {port} on {host} {reason}", EXIT_INPUT) from None


def check_models(settings: Any) -> None:
    """Build each model once from its files before Ray starts, so that missing, junk or
    mis-shaped files give the same one-line message and exit code (3) as ``score``, in
    seconds (neither cast nor placed: the replicas do that)."""
    import gc

    for entry in settings.models:
        check_spec_files(entry.spec())
    for entry in settings.models:
        check_scorer(entry.spec("cpu"))
        gc.collect()


# Options that set ServeSettings fields, and the fields they set (None: not given).
OPTION_FIELDS = (
    ("dtype", "dtype"), ("download_root", "download_root"), ("replicas", "replicas"),
    ("gpus_per_replica", "gpus_per_replica"), ("cpus_per_replica", "cpus_per_replica"),
    ("max_batch_size", "max_batch_size"), ("batch_wait_ms", "batch_wait_ms"), ("max_pairs", "max_pairs"),
    ("max_queue", "max_queue_pairs"), ("timeout", "request_timeout_s"), ("api_key_env", "api_key_env"),
    ("stats", "stats"), ("normalize", "normalize"),
)


def read_settings_file(path: str) -> Dict[str, Any]:
    """The fields of a ``--settings`` file (JSON, or YAML when PyYAML is installed)."""
    import json

    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise CliError(f"cannot read --settings file {path}: {error.strerror or error}", EXIT_INPUT) from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise CliError(f"--settings {path} is not JSON (YAML needs PyYAML installed)", EXIT_INPUT) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CliError(f"--settings {path} is neither JSON nor YAML: {error}", EXIT_INPUT) from None
    if not isinstance(data, dict):
        raise CliError(f"--settings {path} must hold an object of settings", EXIT_INPUT)
    return data


def settings_from_args(args: argparse.Namespace, cpus: Optional[float] = None) -> Any:
    """The :class:`ServeSettings`: the ``--settings`` file's, overridden by the options given,
    with each model's ``--checkpoint`` files (raises pydantic's ``ValidationError``).

    ``cpus`` is the private Ray's CPU count: replicas then share what the ingress leaves,
    unless ``--cpus-per-replica`` (or the file) says otherwise.
    """
    from ..runners.serve import ServeSettings

    data = read_settings_file(args.settings) if args.settings else {}
    if args.models or args.model:
        data["models"] = args.models or [args.model]
        data.pop("model", None)
    for option, field in OPTION_FIELDS:
        value = getattr(args, option, None)
        if value is not None:
            data[field] = value
    if args.max_body_mb is not None:
        data["max_body_bytes"] = args.max_body_mb * 2**20
    settings = ServeSettings.model_validate(data)
    given = model_files(args, [entry.model for entry in settings.models], args.parser)
    replicas = sum(entry.replicas for entry in settings.models)
    share = None if cpus is None else round(
        max(0.25, (cpus - settings.ingress_cpus * settings.ingress_replicas) / replicas), 2)
    entries = []
    for entry in settings.models:
        update: Dict[str, Any] = {}
        if given.get(entry.model):
            update["files"] = {**entry.files, **given[entry.model]}
        if entry.model in args.int8_files:
            update["int8"] = args.int8_files[entry.model]
        if share is not None and "cpus_per_replica" not in entry.model_fields_set:
            update["cpus_per_replica"] = share
        entries.append(entry.model_copy(update=update).model_dump())
    return ServeSettings.model_validate({**settings.model_dump(), "models": entries})


def validation_message(error: Any) -> str:
    """A pydantic error in one line: each problem with where it is."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def check_stats(settings: Any) -> None:
    """A ``--stats`` file is read (exit 3 when it cannot be) and covers every served model
    when z-scores are the default (exit 2)."""
    if settings.stats is None:
        return
    from ..errors import InputError
    from ..reward_stats import RewardStats, check_scaling

    stats = RewardStats.load(settings.stats)
    try:
        check_scaling(settings.normalize, stats, settings.keys)
    except InputError as error:
        raise CliError(f"--normalize zscore: {settings.stats}: {error}", EXIT_USAGE) from None


def run(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from ..runners.serve import build_app
    except ImportError as error:
        raise CliError(f"{error}; install the server with: pip install 'imagereward[serve]'") from error
    from pydantic import ValidationError

    def settings_of(cpus: Optional[float] = None) -> Any:
        try:
            return settings_from_args(args, cpus)
        except ValidationError as error:
            raise CliError(f"server settings: {validation_message(error)}", EXIT_USAGE) from None

    if args.max_pairs is not None and args.max_pairs > (args.max_queue or 1024):
        args.parser.error(f"--max-pairs ({args.max_pairs}) must not exceed --max-queue ({args.max_queue or 1024})")
    settings = settings_of()
    if settings.api_key_env and not os.environ.get(settings.api_key_env):
        raise CliError(f"--api-key-env {settings.api_key_env}: that variable is not set or empty", EXIT_USAGE)
    check_stats(settings)
    if args.offline:
        os.environ["IMAGEREWARD_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    check_port_free(args.host, args.port)
    check_models(settings)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key_env:
        print(f"imagereward: warning: serving on {args.host} without --api-key-env: "
              "anyone who can reach this port can use the server")

    # Without --address (or RAY_ADDRESS), start a Ray of our own rather than join one found here.
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        from ..runners import private_ray

        private_ray.start(args.verbose, configure_logging=args.verbose, log_to_driver=args.verbose)
        settings = settings_of(ray.cluster_resources().get("CPU", 1.0))  # replicas share this machine
    else:
        ray.init(address=address, include_dashboard=False, configure_logging=args.verbose,
                 log_to_driver=args.verbose)
    if not args.verbose:  # Serve's start-up notices; the command says what is served, and where
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    stop = _stop_on_signals()  # after ray.init, which installs handlers of its own
    try:
        check_placement(settings, ray.cluster_resources(), private=address == "local")
        from ..runners.serve.drain import drain, start_coordinator

        name = f"imagereward-drain-{os.getpid()}"
        coordinator = start_coordinator(name)
        settings = settings.model_copy(update={"drain_coordinator": name})
        serve.start(http_options={"host": args.host, "port": args.port})
        if not _deploy(lambda: serve.run(build_app(settings), name="imagereward", route_prefix="/"), stop):
            print("imagereward: stopped before the server was ready", flush=True)
            return 0
        replicas = ", ".join(f"{entry.key} x{entry.replicas}" for entry in settings.models)
        print(f"imagereward: serving {settings.label} on http://{args.host}:{args.port} "
              f"(replicas: {replicas}); Ctrl-C to stop", flush=True)
        stop.wait()
        print(f"imagereward: stopping: answering the requests already accepted (at most "
              f"{args.drain_timeout:g} s), refusing new ones with 503", flush=True)
        left = drain(coordinator, args.drain_timeout)
        if left:
            print(f"imagereward: {left} request(s) still unanswered after {args.drain_timeout:g} s",
                  flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def check_placement(settings: Any, resources: Dict[str, float], private: bool) -> None:
    """Refuse, before deploying, replicas that this Ray cannot place (a cluster that may
    grow only gets a warning)."""
    needs = {
        "CPU": settings.ingress_replicas * settings.ingress_cpus
        + sum(entry.replicas * entry.cpus_per_replica for entry in settings.models),
        "GPU": sum(entry.replicas * (entry.gpus_per_replica or 0.0) for entry in settings.models),
    }
    for kind, flag in (("CPU", "--cpus-per-replica"), ("GPU", "--gpus-per-replica")):
        have = resources.get(kind, 0.0)
        if needs[kind] > have + 1e-9:
            message = (f"the models' replicas x {flag}{' and the ingress' if kind == 'CPU' else ''} need "
                       f"{needs[kind]:g} {kind}s and this Ray has {have:g}: lower --replicas or {flag}")
            if private:
                raise CliError(message, EXIT_USAGE)
            print(f"imagereward: warning: {message}, or add nodes; replicas wait until they fit",
                  flush=True)


def _deploy(run: Any, stop: threading.Event) -> bool:
    """Deploy in a thread, so that a stop signal is obeyed while replicas start; True once ready."""
    done = threading.Event()
    failure: List[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as error:  # noqa: BLE001 - reported below, in the main thread
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=target, name="imagereward-deploy", daemon=True).start()
    while not done.wait(0.2):
        if stop.is_set():
            return False
    if failure:
        raise CliError(f"the server did not start: {failure[0]}", EXIT_FAILURE)
    return True


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (also while the application is still starting)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
