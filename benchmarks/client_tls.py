"""Reward clients with a TLS context of their own (httpx's default) against the shared one.

    flock /tmp/imagereward-cpu.lock python benchmarks/client_tls.py --rounds 4

httpx reads the whole CA bundle into a new TLS context for every client it opens, even
for ``http://`` URLs; ``imagereward.client`` now hands every client the process's one
context (``client.tls_context``). This measures what that changes, in one run:

- opening a client: milliseconds of this process's CPU per ``RewardClient``, each way;
- the server of ``serve.py`` (full-size random ImageReward, one replica with all cores,
  ``--dtype``, msgpack bodies) fed by ``--clients`` clients that each open a
  ``RewardClient``, as ``serve.py`` does: per round the in-process ``score_batch`` rate,
  then the server with the clients of before and of now (the order flips every round),
  each as a share of the in-process rate, and the clients' CPU per pair.

The scores of both client kinds are checked against in-process. The CPU flags and
torch version are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve  # noqa: E402

SIDES = ("own context per client (before)", "shared context (now)")


def open_client_ms(url: str, tls: Callable[[], Any], count: int = 20) -> float:
    from imagereward import client as client_module

    client_module.tls_context, shared = tls, client_module.tls_context
    try:
        start = time.process_time()
        for _ in range(count):
            client_module.RewardClient(url).close()
        return (time.process_time() - start) * 1000 / count
    finally:
        client_module.tls_context = shared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=192)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=HERE.parent / ".bench" / "serve")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settings = argparse.Namespace(threads=args.threads, max_batch_size=16, batch_wait_ms=10.0, dtype=args.dtype,
                                  wire="msgpack", pairs_per_request=2, clients=args.clients)
    from imagereward import client as client_module

    shared = client_module.tls_context
    own: Callable[[], Any] = lambda: True  # noqa: E731  (httpx makes its own, as before)
    tls = {SIDES[0]: own, SIDES[1]: shared}
    report: Dict[str, Any] = {"machine": serve.machine(args.threads), "settings": vars(args) | {"workdir": None,
                                                                                              "json": None}}
    print(f"[client-tls] {report['machine']}", file=sys.stderr, flush=True)
    report["open_client_cpu_ms"] = {side: open_client_ms("http://127.0.0.1:9", tls[side]) for side in SIDES}
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = serve.make_model(args.workdir, False)
    images = serve.make_images(16, 512)
    pairs = [(serve.PROMPTS[i % len(serve.PROMPTS)], images[i % len(images)]) for i in range(args.pairs)]
    model = serve.load_in_process(folder, settings)
    url = serve.start_server(folder, settings)
    ratios: Dict[str, List[float]] = {side: [] for side in SIDES}
    client_cpu: Dict[str, List[float]] = {side: [] for side in SIDES}
    max_diff = 0.0
    try:
        with client_module.RewardClient(url, timeout=600) as client:
            client.score([pairs[0][0]], [pairs[0][1]])  # warm-up through the whole stack
        for index in range(args.rounds):
            local = serve.in_process(model, pairs)
            for side in (SIDES if index % 2 == 0 else SIDES[::-1]):
                client_module.tls_context = tls[side]
                try:
                    remote = serve.server_side(url, pairs, settings)
                finally:
                    client_module.tls_context = shared
                ratios[side].append(remote["pairs_per_second"] / local["pairs_per_second"])
                client_cpu[side].append(remote["cpu"]["ms_per_pair"]["clients (this process)"])
                max_diff = max(max_diff, max(abs(a - b) for a, b in zip(remote["scores"], local["scores"])))
            print(f"[client-tls] round {index + 1}: server / in-process "
                  + ", ".join(f"{side} {ratios[side][-1]:.3f}" for side in SIDES), file=sys.stderr, flush=True)
    finally:
        serve.stop_server()
    report.update(ratios=ratios, clients_cpu_ms_per_pair=client_cpu, max_abs_diff_vs_in_process=max_diff,
                  median_ratio={side: statistics.median(values) for side, values in ratios.items()})
    print("| clients | opening a client (CPU ms) | server / in-process by round | median | clients' CPU ms per pair |")
    print("|---|---|---|---|---|")
    for side in SIDES:
        print(f"| {side} | {report['open_client_cpu_ms'][side]:.2f} | "
              + ", ".join(f"{r:.3f}" for r in ratios[side]) + f" | **{statistics.median(ratios[side]):.3f}x** | "
              + f"{statistics.median(client_cpu[side]):.2f} |")
    print(f"max |server - in-process| over every pair: {max_diff:.3g} ({args.dtype}: batches differ)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
