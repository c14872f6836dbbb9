"""``imagereward serve`` from the command line, and what importing the package pulls in."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import BERT_VOCAB, save_tiny_model

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from imagereward.cli import main  # noqa: E402


def test_import_pulls_in_no_server_or_http_stack():
    code = (
        "import sys, imagereward, imagereward.runners.serve, imagereward.wire, imagereward.client\n"
        "heavy = [m for m in ('ray', 'fastapi', 'starlette', 'pydantic', 'httpx', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_usage_errors_exit_before_starting_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMAGEREWARD_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--api-key-env", "IMAGEREWARD_NO_SUCH_KEY"]) == 2
    assert "IMAGEREWARD_NO_SUCH_KEY" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 3
    assert main(["serve", "--model", "nope"]) == 2
    assert main(["serve", "--max-pairs", "2000", "--max-queue", "10"]) == 2
    assert "--max-pairs (2000) must not exceed --max-queue (10)" in capsys.readouterr().err


def test_bad_port_and_bad_model_files_fail_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", None)  # never reached
    assert main(["serve", "--port", "99999"]) == 2
    assert "port 99999 is out of range" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 3
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    junk = tmp_path / "ImageReward.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["serve", "--checkpoint", str(junk), "--port", str(_free_port())]) == 3
    err = capsys.readouterr().err
    assert f"{junk} is not a checkpoint" in err and len(err.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_answers_on_loopback_and_stops_cleanly(tmp_path):
    """Two models from the command line (each its own deployment), API key, loopback only,
    and a stop that drains."""
    from test_baselines import write_clip_archive

    folder = save_tiny_model(tmp_path)
    clip = write_clip_archive(tmp_path / "ViT-L-14.pt", seed=5)
    port = _free_port()
    env = dict(os.environ, IMAGEREWARD_BERT_VOCAB=str(BERT_VOCAB), HF_HUB_OFFLINE="1",
               IMAGEREWARD_OFFLINE="1", OMP_NUM_THREADS="1", CLI_TEST_KEY="k3y")
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "imagereward", "serve", "--models", "ImageReward-v1.0,CLIP",
         "--checkpoint", f"ImageReward-v1.0={folder}", "--checkpoint", f"CLIP={clip}", "--port", str(port),
         "--cpus-per-replica", "0", "--api-key-env", "CLI_TEST_KEY", "--max-batch-size", "256",
         "--batch-wait-ms", "2500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)
        body = {"prompts": ["a cat"], "images": [{"data": "A" * 16, "shape": [2, 2, 3]}]}
        url = f"http://127.0.0.1:{port}/score"
        assert httpx.post(url, json=body).status_code == 401
        reply = httpx.post(url, json=body, headers={"X-API-Key": "k3y"})
        assert reply.status_code == 200 and len(reply.json()["scores"]) == 1
        both = httpx.post(f"http://127.0.0.1:{port}/rewards", json=dict(body, weights={"CLIP": 1.0, "ImageReward-v1.0": 1.0}),
                          headers={"X-API-Key": "k3y"}, timeout=30)
        assert both.status_code == 200 and sorted(both.json()["scores"]) == ["CLIP", "ImageReward-v1.0"], both.text
        try:
            listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        except FileNotFoundError:  # no ss on this machine
            listing = ""
        bound = {line.split()[3] for line in listing.splitlines() if line.strip()}
        assert bound <= {f"127.0.0.1:{port}"}, bound  # loopback only, never 0.0.0.0

        # A burst that waits in the batch queue (2.5 s), SIGTERM during it: every accepted
        # request is answered, a new one is refused with 503, and the process exits 0 soon.
        burst = {"prompts": ["a cat"] * 40, "images": [{"data": "A" * 16, "shape": [2, 2, 3]}] * 40}
        with ThreadPoolExecutor(6) as pool:
            replies = [pool.submit(httpx.post, url, json=burst, headers={"X-API-Key": "k3y"}, timeout=60)
                       for _ in range(6)]
            _wait_until_queued(f"http://127.0.0.1:{port}", 6 * 40)  # all six accepted, none scored yet
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late = httpx.post(url, json=body, headers={"X-API-Key": "k3y"}, timeout=10)
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
            assert all(r.result().status_code == 200 and len(r.result().json()["scores"]) == 40 for r in replies)
        output, _ = process.communicate(timeout=60)
        assert time.monotonic() - signalled < 15, "stop-to-exit took too long"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "serving ImageReward-v1.0 (model), CLIP (ViT-L-14.pt)" in output and "stopping" in output
    assert "Token authentication" not in output and "Connecting to existing Serve app" not in output


def _wait_until_queued(url: str, pairs: int, timeout: float = 30.0) -> None:
    """Until the replica's queue holds ``pairs`` admitted pairs (its /metrics gauge)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", headers={"X-API-Key": "k3y"}, timeout=10).text
        depth = [float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("imagereward_queue_depth")]
        if depth and depth[0] >= pairs:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not accept {pairs} pairs within {timeout} s")


def test_serve_run_import_path_builds_the_application():
    """What ``serve run imagereward.runners.serve:build_app key=value ...`` does with its arguments."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray._common.utils import import_attr

    builder = import_attr("imagereward.runners.serve:build_app")
    app = call_user_app_builder_with_args_if_necessary(
        builder, {"model": "clip", "replicas": "3", "max_batch_size": "64", "gpus_per_replica": "0.5"}
    )
    assert isinstance(app, Application)
    ingress = app._bound_deployment
    settings, models = ingress.init_args
    (model,) = models.values()  # the model's own deployment, bound into the ingress
    assert model._bound_deployment.num_replicas == 3
    assert model._bound_deployment.ray_actor_options["num_gpus"] == 0.5
    assert model._bound_deployment.init_args[0]["model"] == "CLIP" and model._bound_deployment.init_args[0]["max_batch_size"] == 64
    assert settings["models"][0]["model"] == "CLIP"
    with pytest.raises(Exception, match="unknown model"):
        builder({"model": "nope"})

    # Several models from a comma-separated list, each with its own deployment and settings.
    app = call_user_app_builder_with_args_if_necessary(
        builder, {"models": "PickScore,HPSv2.1", "gpus_per_replica": "0.25"}
    )
    _, models = app._bound_deployment.init_args
    assert list(models) == ["PickScore", "HPSv2.1"]
    assert {m._bound_deployment.name for m in models.values()} == {"Model-PickScore", "Model-HPSv2.1"}
    assert all(m._bound_deployment.ray_actor_options["num_gpus"] == 0.25 for m in models.values())


def test_replicas_that_cannot_be_placed_are_refused_and_a_stop_is_obeyed_while_deploying():
    import threading

    from imagereward.cli.common import CliError
    from imagereward.cli.serve import _deploy, check_placement
    from imagereward.runners.serve import ServeSettings

    settings = ServeSettings(replicas=3, cpus_per_replica=1, ingress_cpus=0.5)
    with pytest.raises(CliError, match="need 3.5 CPUs and this Ray has 2: lower --replicas or --cpus-per-replica"):
        check_placement(settings, {"CPU": 2.0}, private=True)
    check_placement(settings, {"CPU": 3.5}, private=True)
    check_placement(settings, {"CPU": 2.0}, private=False)  # a cluster may grow: a warning only
    with pytest.raises(CliError, match="GPU"):
        check_placement(ServeSettings(gpus_per_replica=1), {"CPU": 2.0}, private=True)

    stop, started = threading.Event(), time.monotonic()
    threading.Timer(0.3, stop.set).start()
    assert _deploy(lambda: time.sleep(30), stop) is False  # replicas that never come up
    assert time.monotonic() - started < 5


def test_serve_settings_from_options_a_settings_file_and_per_model_entries(tmp_path):
    """--models, --settings (per-model entries) and the options given, as ServeSettings."""
    from imagereward.cli import build_parser
    from imagereward.cli.serve import settings_from_args
    from imagereward.runners.serve import ServeSettings

    def settings(*argv, cpus=None):
        args = build_parser("serve").parse_args(["serve", *argv])
        return settings_from_args(args, cpus)

    two = settings("--models", "PickScore,hpsv2.1", "--dtype", "bf16", "--max-batch-size", "8",
                   "--checkpoint", "PickScore=/w/pick", cpus=2.0)
    assert two.keys == ["PickScore", "HPSv2.1"]
    assert [m.dtype for m in two.models] == ["bf16", "bf16"] and two.models[1].max_batch_size == 8
    assert two.models[0].files == {"weights": "/w/pick"} and two.models[1].files == {}
    assert two.models[0].cpus_per_replica == 0.75  # (2 CPUs - 0.5 for the ingress) / 2 replicas
    assert settings("--cpus-per-replica", "1", cpus=2.0).models[0].cpus_per_replica == 1.0

    file = tmp_path / "serve.json"
    file.write_text(json.dumps({"models": [{"model": "PickScore", "max_batch_size": 64, "gpus_per_replica": 0.25},
                                           {"model": "CLIP", "name": "clip-b"}], "max_pairs": 64}))
    from_file = settings("--settings", str(file), "--max-pairs", "32")
    assert from_file.keys == ["PickScore", "clip-b"] and from_file.max_pairs == 32
    assert from_file.models[0].max_batch_size == 64 and from_file.models[1].max_batch_size == 32
    assert from_file.models[0].gpus_per_replica == 0.25
    with pytest.raises(Exception, match="served twice under the same name"):
        ServeSettings(models=["PickScore", "pickscore"])
    with pytest.raises(Exception, match="normalize 'zscore' needs stats"):
        ServeSettings(models=["PickScore"], normalize="zscore")
