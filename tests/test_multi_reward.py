"""Rewards for RL trainers: a three-model server, z-scores and weights, clients, reward functions.

One private Ray (2 CPUs, no dashboard) serves the module over loopback:

- ``/`` holds ImageReward, PickScore and HPSv2.1 (three families, two pixel chains)
  with z-score statistics computed by ``imagereward reward-stats``;
- ``/fault`` holds copies of ImageReward and PickScore whose files the tests may
  delete: a PickScore replica killed then cannot come back, as on a node that lost
  its weights; PickScore's queue there is tiny and slow to fill (429 naming it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import imagereward
from helpers import BERT_VOCAB, CLIP_BPE
from imagereward import cli
from imagereward.reward_stats import RewardStats
from imagereward.tokenizers.clip_bpe import BPE_ENV
from scorer_files import save_all

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from imagereward.client import AsyncRewardClient, DeadlineError, RewardClient, RewardServerError  # noqa: E402
from imagereward.rl import MultiReward  # noqa: E402
from imagereward.runners.serve import build_app  # noqa: E402

MODELS = ["ImageReward-v1.0", "PickScore", "HPSv2.1"]
ENV = {"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE),
       "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROMPTS = ["a red bicycle on a hill", "", "un café à Zürich 🌊", "two dogs"]
SAME = 1e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _images(seed: int, count: int = 4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(30 + 7 * i, 50 - 5 * i, 3), dtype=np.uint8) for i in range(count)]


def _raw(pixels: np.ndarray):
    return {"data": base64.b64encode(pixels.tobytes()).decode(), "shape": list(pixels.shape)}


def _close(got, expected, what: str, tolerance: float = SAME) -> None:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    assert got.shape == expected.shape, what
    assert float(np.abs(got - expected).max()) <= tolerance * scale, f"{what}: {got} vs {expected}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        root = tmp_path_factory.mktemp("multi-reward")
        _, folders, _ = save_all(root, MODELS)
        scorers = {name: imagereward.load(name, checkpoint=folders[name], device="cpu") for name in MODELS}
        # Statistics through the command users run, over pairs of their own.
        pairs = root / "pairs.jsonl"
        with open(pairs, "w") as handle:
            for i, pixels in enumerate(_images(100, 6)):
                Image.fromarray(pixels).save(root / f"stat{i}.png")
                handle.write(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "image": str(root / f"stat{i}.png")}) + "\n")
        stats_file = root / "stats.json"
        code = cli.main(["reward-stats", str(pairs), "--models", ",".join(MODELS), "--output", str(stats_file),
                         *[f"--checkpoint={name}={folders[name]}" for name in MODELS]])
        assert code == 0
        fault = {name: shutil.copytree(folders[name], root / "fault" / name) for name in ("ImageReward-v1.0", "PickScore")}

        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
                 runtime_env={"env_vars": ENV}, log_to_driver=False)
        port = _free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            common = dict(cpus_per_replica=0, gpus_per_replica=0, ingress_cpus=0)
            serve.run(build_app(dict(common, models=[{"model": n, "checkpoint": folders[n]} for n in MODELS],
                                     stats=str(stats_file), batch_wait_ms=20)), name="main", route_prefix="/")
            serve.run(build_app(dict(common, max_pairs=2, request_timeout_s=20, models=[
                {"model": "ImageReward-v1.0", "checkpoint": str(fault["ImageReward-v1.0"])},
                {"model": "PickScore", "checkpoint": str(fault["PickScore"]), "max_queue_pairs": 2,
                 "batch_wait_ms": 3000},
            ])), name="fault", route_prefix="/fault")
            yield {"url": f"http://127.0.0.1:{port}", "scorers": scorers, "folders": folders,
                   "stats": RewardStats.load(str(stats_file)), "stats_file": str(stats_file),
                   "pairs": pairs, "fault": fault, "root": root}
        finally:
            serve.shutdown()
            ray.shutdown()


# -- statistics ---------------------------------------------------------------------------
def test_reward_stats_command_writes_each_models_mean_and_std(world):
    records = [json.loads(line) for line in open(world["pairs"])]
    prompts, paths = [r["prompt"] for r in records], [r["image"] for r in records]
    for name, scorer in world["scorers"].items():
        scores = np.asarray(scorer.score_batch(prompts, paths), np.float64)
        stats = world["stats"].models[name]
        assert stats.count == len(records)
        assert abs(stats.mean - scores.mean()) <= 1e-5 * max(1, abs(scores.mean()))
        assert abs(stats.std - scores.std()) <= 1e-5 * max(1, scores.std())


# -- the three-model server ---------------------------------------------------------------
def test_rewards_equal_in_process_scores_weights_and_zscores(world):
    images = _images(1)
    body = {"prompts": PROMPTS, "images": [_raw(x) for x in images]}
    reply = httpx.post(world["url"] + "/rewards", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert list(answer["scores"]) == MODELS and answer["reward"] is None and answer["normalize"] == "none"
    raw = {}
    for name, scorer in world["scorers"].items():
        raw[name] = np.asarray(scorer.score_batch(PROMPTS, images), np.float64)
        _close(answer["scores"][name], raw[name], f"{name}: /rewards against score_batch")

    weights = {"PickScore": 0.7, "HPSv2.1": 2.0}  # models default to those weighted
    zscored = httpx.post(world["url"] + "/rewards", json=dict(body, weights=weights, normalize="zscore"),
                         timeout=60).json()
    assert sorted(zscored["scores"]) == sorted(weights) and zscored["normalize"] == "zscore"
    expected = {}
    for name in weights:
        stats = world["stats"].models[name]
        expected[name] = (raw[name] - stats.mean) / stats.std
        _close(zscored["scores"][name], expected[name], f"{name}: z-score", 1e-5)
    _close(zscored["reward"], sum(w * expected[m] for m, w in weights.items()), "weighted z-scores", 1e-5)


@pytest.mark.parametrize("body, status, needle", [
    ({"models": ["CLIP"]}, 400, "model 'CLIP' is not served here"),
    ({"models": ["PickScore"], "weights": {"HPSv2.1": 1.0}}, 400, "weights name 'HPSv2.1'"),
    ({"weights": {"PickScore": "heavy"}}, 400, "weights.PickScore"),
    ({"models": []}, 400, "models is empty"),
    ({"normalize": "minmax"}, 400, "normalize"),
])
def test_bad_rewards_requests_are_refused_naming_what_is_wrong(world, body, status, needle):
    full = {"prompts": PROMPTS[:2], "images": [_raw(x) for x in _images(2, 2)], **body}
    reply = httpx.post(world["url"] + "/rewards", json=full, timeout=30)
    assert reply.status_code == status and needle in reply.json()["detail"], reply.text


def test_readyz_names_every_model_and_score_takes_a_model(world):
    ready = httpx.get(world["url"] + "/readyz", timeout=30).json()
    assert ready["ready"] is True and list(ready["models"]) == MODELS
    assert all(status["ready"] and status["dtype"] == "float32" for status in ready["models"].values())
    images = _images(3, 2)
    with RewardClient(world["url"]) as client:
        _close(client.score(PROMPTS[:2], images), world["scorers"][MODELS[0]].score_batch(PROMPTS[:2], images),
               "the first model answers /score by default")
        _close(client.score(PROMPTS[:2], images, model="HPSv2.1"),
               world["scorers"]["HPSv2.1"].score_batch(PROMPTS[:2], images), "/score with model=HPSv2.1")
        with pytest.raises(RewardServerError, match="not served here"):
            client.score(PROMPTS[:2], images, model="BLIP")


def test_async_client_gives_the_sync_clients_numbers(world):
    images = _images(4)
    weights = {"ImageReward-v1.0": 1.0, "PickScore": 0.01}
    with RewardClient(world["url"]) as client:
        expected = client.rewards(PROMPTS, images, weights=weights)

    async def run():
        async with AsyncRewardClient(world["url"], deadline=60) as client:
            answers = await asyncio.gather(*(client.rewards(PROMPTS, images, weights=weights) for _ in range(4)))
            ranked = await client.rank("a cat", images, model="PickScore")
            return answers, ranked

    answers, ranked = asyncio.run(run())
    for answer in answers:
        np.testing.assert_array_equal(answer.reward, expected.reward)
        for name in weights:
            np.testing.assert_array_equal(answer.scores[name], expected.scores[name])
    _close(ranked.rewards, world["scorers"]["PickScore"].score_batch(["a cat"] * 4, images), "async /rank")


def test_client_deadline_bounds_the_retries():
    port = _free_port()  # nothing listens: every attempt fails to connect, and is retried
    started = time.monotonic()
    with RewardClient(f"http://127.0.0.1:{port}", retries=100, backoff=0.2, deadline=1.5) as client:
        with pytest.raises((httpx.ConnectError, DeadlineError)):
            client.score("a cat", _images(5, 1))
    assert time.monotonic() - started < 3.0

    async def run():
        async with AsyncRewardClient(f"http://127.0.0.1:{port}", retries=100, backoff=0.2, deadline=1.5) as client:
            await client.score("a cat", _images(5, 1))

    started = time.monotonic()
    with pytest.raises((httpx.ConnectError, DeadlineError)):
        asyncio.run(run())
    assert time.monotonic() - started < 3.0


# -- reward functions in trainers' shapes -------------------------------------------------
def test_reward_functions_give_the_same_numbers_locally_and_remotely(world):
    weights = {"ImageReward-v1.0": 1.0, "PickScore": 0.5, "HPSv2.1": 3.0}
    local = MultiReward(dict(world["scorers"]), weights=weights, normalize="zscore", stats=world["stats_file"])
    remote = MultiReward(weights, normalize="zscore", stats=world["stats_file"], remote=world["url"])
    uint8 = torch.from_numpy(np.stack(_images(6, 3)[0:1] * 3)).permute(0, 3, 1, 2).contiguous()
    uint8[1] = uint8[1].flip(-1)
    floats = torch.rand(3, 3, 40, 33, generator=torch.Generator().manual_seed(7))
    pil = [Image.fromarray(x) for x in _images(8, 3)]
    prompts = PROMPTS[:3]
    for images in (uint8, floats, pil):
        expected = local.scores(images, prompts)
        got = remote.scores(images, prompts)
        for name in weights:
            _close(got[name], expected[name], f"{name}: remote against local z-scores")
        # The local numbers are each scorer's own, standardised with the statistics file.
        items = [x for x in images] if isinstance(images, list) else None
        if items is not None:
            raw = world["scorers"]["PickScore"].score_batch(prompts, items)
            stats = world["stats"].models["PickScore"]
            _close(expected["PickScore"], (np.asarray(raw) - stats.mean) / stats.std, "PickScore z-score", 1e-5)

    rewards, info = local.ddpo_fn()(floats, prompts, [{}] * 3)
    assert rewards.dtype == np.float32 and rewards.shape == (3,) and set(info["scores"]) == set(weights)
    _close(rewards, sum(w * info["scores"][m].astype(np.float64) for m, w in weights.items()), "ddpo reward")
    remote_rewards, _ = remote.ddpo_fn()(floats, prompts, [{}] * 3)
    _close(remote_rewards, rewards, "ddpo reward, remote against local")
    grouped, _ = remote.grpo_fn()(floats, prompts, None)
    assert set(grouped) == set(weights) | {"avg"}
    _close(grouped["avg"], rewards, "grpo avg")
    remote.close()


def test_reward_loads_registered_models_from_local_files(world):
    """MultiReward by registered names and local files scores as the scorers loaded by hand."""
    files = {name: {"weights": world["folders"][name]} for name in ("PickScore", "HPSv2.1")}
    reward = MultiReward({"PickScore": 0.01, "HPSv2.1": 1.0}, files=files, device="cpu")
    images = _images(11, 3)
    scores = reward.scores(images, PROMPTS[:3])
    for name in files:
        _close(scores[name], world["scorers"][name].score_batch(PROMPTS[:3], images), f"{name}: loaded by name")
    _close(reward(images, PROMPTS[:3]), 0.01 * scores["PickScore"].astype(np.float64) + scores["HPSv2.1"],
           "weighted reward")


def test_differentiable_reward_passes_gradients_to_the_pixels(world):
    reward = MultiReward(dict(world["scorers"]), weights={"ImageReward-v1.0": 1.0, "HPSv2.1": 2.0})
    for pixel_range, low in (("0,1", 0.0), ("-1,1", -1.0)):
        pixels = (torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(3)) * (1 - low) + low)
        pixels.requires_grad_(True)
        loss = reward.loss(pixels, "a cat", pixel_range=pixel_range)
        loss.backward()
        assert pixels.grad is not None and pixels.grad.abs().sum() > 0, pixel_range
    values = reward.differentiable(pixels.detach(), "a cat", pixel_range="-1,1")
    expected = sum(w * world["scorers"][m].score_tensors((pixels.detach() + 1) / 2, "a cat")
                   for m, w in {"ImageReward-v1.0": 1.0, "HPSv2.1": 2.0}.items())
    _close(values.detach(), expected.detach(), "differentiable reward")
    with pytest.raises(imagereward.InputError, match="no gradients"):
        MultiReward(["PickScore"], remote=world["url"]).differentiable(pixels, "a cat")


def test_reward_refuses_models_without_statistics_and_bad_images(world, tmp_path):
    partial = tmp_path / "partial.json"
    RewardStats({"PickScore": world["stats"].models["PickScore"]}).save(str(partial))
    with pytest.raises(imagereward.InputError, match="no z-score statistics for ImageReward-v1.0"):
        MultiReward(dict(world["scorers"]), normalize="zscore", stats=str(partial))
    reward = MultiReward(dict(world["scorers"]))
    with pytest.raises(imagereward.InputError, match=r"images\[1\]: float pixels must lie in \[0, 1\]"):
        reward(torch.stack([torch.rand(3, 8, 8), torch.rand(3, 8, 8) * 2]), "a cat")


# -- one model failing while the others serve ---------------------------------------------
def _queued(url: str, model: str) -> float:
    """The pairs a model's replica holds, from the ingress's /metrics."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("imagereward_queue_depth{") and f'model="{model}"' in line:
            return float(line.split()[-1])
    return 0.0


def test_a_full_model_queue_is_429_naming_it_while_the_other_model_answers(world):
    url = world["url"] + "/fault"
    two = {"prompts": ["a", "b"], "images": [_raw(x) for x in _images(9, 2)]}
    with ThreadPoolExecutor(1) as pool:
        # PickScore's queue holds 2 pairs and its batch waits 3 s to fill: the first request fills it.
        first = pool.submit(httpx.post, url + "/score", json=dict(two, model="PickScore"), timeout=30)
        deadline = time.monotonic() + 10
        while _queued(url, "PickScore") < 2:
            assert time.monotonic() < deadline and not first.done(), "the first request was not queued"
            time.sleep(0.02)
        second = httpx.post(url + "/rewards", json=dict(two, models=["PickScore"]), timeout=30)
        assert second.status_code == 429, second.text
        assert second.json()["model"] == "PickScore" and "PickScore" in second.json()["detail"]
        other = httpx.post(url + "/rewards", json=dict(two, models=["ImageReward-v1.0"]), timeout=30)
        assert other.status_code == 200, other.text
        assert first.result().status_code == 200


def test_a_dead_model_is_503_naming_it_while_the_other_keeps_serving(world):
    url = world["url"] + "/fault"
    images = _images(10, 2)
    body = {"prompts": ["a cat", "a dog"], "images": [_raw(x) for x in images]}
    expected = world["scorers"]["ImageReward-v1.0"].score_batch(["a cat", "a dog"], images)
    shutil.rmtree(world["fault"]["PickScore"])  # a replacement replica cannot load: the model stays down
    names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)]
    (replica,) = [n for n in names if n.startswith("SERVE_REPLICA::fault#Model-PickScore#")]
    stop = threading.Event()
    others = []

    def keep_scoring_the_other_model():
        while not stop.is_set():
            reply = httpx.post(url + "/rewards", json=dict(body, models=["ImageReward-v1.0"]), timeout=30)
            others.append(reply.status_code == 200 and np.allclose(
                reply.json()["scores"]["ImageReward-v1.0"], expected, atol=1e-5))

    with ThreadPoolExecutor(1) as pool:
        worker = pool.submit(keep_scoring_the_other_model)
        try:
            ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
            deadline = time.monotonic() + 30
            while True:
                reply = httpx.post(url + "/rewards", json=body, timeout=30)  # both models
                if reply.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert reply.status_code == 503, reply.text
            assert reply.json()["model"] == "PickScore" and reply.json()["error"] == "model_unavailable"
            assert "retry-after" in reply.headers
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503
            statuses = ready.json()["models"]
            assert statuses["PickScore"]["ready"] is False and statuses["ImageReward-v1.0"]["ready"] is True
            count = len(others)
            deadline = time.monotonic() + 20
            while len(others) < count + 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            worker.result()
    assert len(others) >= 3 and all(others), others
