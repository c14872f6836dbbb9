"""``imagereward serve``: the reward server on Ray Serve, on this machine or a Ray cluster."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading
from typing import Any, Dict, List

from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_USAGE,
    IMAGEREWARD,
    CliError,
    HelpFormatter,
    check_spec_files,
    load_scorer,
    add_download_options,
    add_dtype_option,
    add_file_options,
    add_general_options,
    model_files,
    model_name,
    model_names_help,
    positive_int,
)

EPILOG = f"""\
examples:
  imagereward serve --checkpoint ImageReward.pt
  imagereward serve --model CLIP --replicas 2 --max-batch-size 64
  IMAGEREWARD_API_KEY=secret imagereward serve --host 0.0.0.0 --api-key-env IMAGEREWARD_API_KEY
  imagereward serve --address auto --replicas 8 --gpus-per-replica 1   # on a Ray cluster

endpoints: POST /score, /rank, /score_matrix; GET /healthz, /readyz, /metrics;
the OpenAPI schema is at /openapi.json and /docs. Stop with Ctrl-C or SIGTERM:
requests already accepted are finished first. See docs/serve.md.

{EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="reward server for RL trainers (Ray Serve, dynamic batching)",
        description="Serve rewards over HTTP with dynamic batching across concurrent requests.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", type=model_name, default=IMAGEREWARD,
                       help=f"a registered scorer: {model_names_help()} (default: %(default)s)")
    add_file_options(model, "local files instead of downloading (a bare PATH is the model's weights)")
    add_dtype_option(model)
    add_download_options(model)

    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    http.add_argument("--port", type=port_number, default=8000, help="1 to 65535 (default: %(default)s)")
    http.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                      help="on Ctrl-C or SIGTERM, how long accepted requests may take to be answered "
                      "before the server exits (default: %(default)s)")
    http.add_argument("--api-key-env", metavar="NAME",
                      help="require the API key held by environment variable NAME "
                      "(Authorization: Bearer KEY or X-API-Key: KEY)")

    batching = parser.add_argument_group("replicas and batching")
    batching.add_argument("--replicas", type=positive_int, default=1, help="model replicas (default: %(default)s)")
    batching.add_argument("--gpus-per-replica", type=float, metavar="N",
                          help="GPUs per replica (default: 1 when the Ray cluster has GPUs, else 0)")
    batching.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="N",
                          help="CPUs per replica; also its torch threads (default: %(default)s)")
    batching.add_argument("--max-batch-size", type=positive_int, default=32, metavar="N",
                          help="pairs per forward pass (default: %(default)s)")
    batching.add_argument("--batch-wait-ms", type=float, default=10.0, metavar="MS",
                          help="how long a batch waits to fill up (default: %(default)s)")
    batching.add_argument("--address", metavar="ADDRESS",
                          help="Ray cluster to join (e.g. auto, or ray://HOST:10001); default: RAY_ADDRESS, "
                          "else a new Ray on this machine")

    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-pairs", type=positive_int, default=256, metavar="N",
                        help="pairs per request; more get 413 (default: %(default)s)")
    limits.add_argument("--max-body-mb", type=positive_int, default=128, metavar="MB",
                        help="request body size; larger get 413 (default: %(default)s)")
    limits.add_argument("--max-queue", type=positive_int, default=1024, metavar="N",
                        help="pairs waiting per replica; more get 429 (default: %(default)s)")
    limits.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="per-request timeout; slower requests get 504 (default: %(default)s)")
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


def check_model(settings: Any) -> None:
    """Load the model once on the CPU before Ray starts, so that missing, junk or mis-shaped
    files give the same one-line message and exit code (3) as ``score``, in seconds."""
    import gc

    check_spec_files(settings.spec())
    scorer = load_scorer(settings.spec("cpu"))
    del scorer
    gc.collect()


def settings_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(
        model=args.model,
        files=model_files(args, [args.model], args.parser)[args.model],
        download_root=args.download_root,
        dtype=args.dtype,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_body_bytes=args.max_body_mb * 2**20,
        max_pairs=args.max_pairs,
        max_queue_pairs=args.max_queue,
        request_timeout_s=args.timeout,
        api_key_env=args.api_key_env,
    )


def run(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from ..runners.serve import ServeSettings, build_app
    except ImportError as error:
        raise CliError(f"{error}; install the server with: pip install 'imagereward[serve]'") from error
    from pydantic import ValidationError

    if args.max_pairs > args.max_queue:
        args.parser.error(f"--max-pairs ({args.max_pairs}) must not exceed --max-queue ({args.max_queue})")
    try:
        settings = ServeSettings(**settings_from_args(args))
    except ValidationError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    if settings.api_key_env and not os.environ.get(settings.api_key_env):
        raise CliError(f"--api-key-env {settings.api_key_env}: that variable is not set or empty", EXIT_USAGE)
    if args.offline:
        os.environ["IMAGEREWARD_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    check_port_free(args.host, args.port)
    check_model(settings)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key_env:
        print(f"imagereward: warning: serving on {args.host} without --api-key-env: "
              "anyone who can reach this port can use the server")

    # Without --address (or RAY_ADDRESS), start a Ray of our own rather than join one found here.
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        from ..runners import private_ray

        private_ray.start(args.verbose, configure_logging=args.verbose, log_to_driver=args.verbose)
    if not args.verbose:  # Serve's start-up notices; the command says what is served, and where
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    else:
        ray.init(address=address, include_dashboard=False, configure_logging=args.verbose,
                 log_to_driver=args.verbose)
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
        print(f"imagereward: serving {settings.label} on http://{args.host}:{args.port} "
              f"({settings.replicas} replica(s)); Ctrl-C to stop", flush=True)
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
    needs = {"CPU": settings.replicas * settings.cpus_per_replica,
             "GPU": settings.replicas * (settings.gpus_per_replica or 0.0)}
    for kind, flag in (("CPU", "--cpus-per-replica"), ("GPU", "--gpus-per-replica")):
        have = resources.get(kind, 0.0)
        if needs[kind] > have:
            message = (f"--replicas {settings.replicas} x {flag} needs {needs[kind]:g} {kind}s and this "
                       f"Ray has {have:g}: lower --replicas or {flag}")
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
