"""Every registered scorer through every runner: the same numbers through every door.

Each scorer is written as a tiny random checkpoint in its original file format, loaded
in-process, saved with ``save_pretrained`` (and loaded back: persistence for every
scorer), then scored on awkward images through: ``score``, ``score_batch``, ``rank``,
``score_matrix``, ``imagereward score`` (positional and ``--input``), ``score-dataset``
on Ray Data, one Ray Serve server holding every scorer over HTTP (file bytes, and
``RewardClient`` with arrays and PIL images; ``/rewards`` with all of them in one
request, each image decoded once), and ReFL's reward on pixels at the scorer's resolution. int8 (``--int8``) is checked
on every scorer in-process and through every door for two of them. Each
runner must equal the in-process call of the same shape within 1e-6, single ``score()``
calls within 1e-5 (batch composition moves float rounding), both relative to the
score's scale.

One private Ray (2 CPUs, no dashboard) serves the module; HTTP stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

import imagereward
from helpers import BERT_VOCAB, CLIP_BPE, run_cli
from imagereward.errors import CalibrationError
from imagereward.int8 import calibrate, quantize_int8
from imagereward.items import decode
from imagereward.refl.reward import Reward
from imagereward.tokenizers.clip_bpe import BPE_ENV
from scorer_files import save_all

pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")
httpx = pytest.importorskip("httpx")

PROMPTS = ["a red bicycle on a hill", "", "un café à Zürich, 東京の夜景 🌊"]
SAME_SHAPE = 1e-6
ENV = {"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE),
       "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(3 * x + y) % 256, (x * y // 7) % 256, ((x // 5 + y // 5) % 2) * 200], -1)
    return np.clip(base + rng.integers(-30, 31, (height, width, 3)), 0, 255).astype(np.uint8)


def write_awkward_images(folder: Path) -> List[Path]:
    """Non-square both ways, RGBA with transparency, palette, CMYK, tiny, EXIF-rotated."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []

    def save(name: str, image: Image.Image, **options) -> None:
        image.save(folder / name, **options)
        images.append(folder / name)

    save("wide.png", Image.fromarray(_pattern(1024, 256, 1)))
    save("tall.png", Image.fromarray(_pattern(50, 130, 2)))
    rgba = np.dstack([_pattern(400, 300, 3), (np.arange(400)[None, :] % 256 * np.ones((300, 1))).astype(np.uint8)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("palette.png", Image.fromarray(_pattern(90, 70, 4)).convert("P", palette=Image.ADAPTIVE, colors=17))
    save("cmyk.tiff", Image.fromarray(_pattern(120, 80, 5)).convert("CMYK"))
    save("tiny.png", Image.fromarray(_pattern(5, 3, 6)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    save("rotated.jpg", Image.fromarray(_pattern(80, 60, 7)), exif=exif, quality=95)
    return images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Saved tiny scorers, the images, and a private Ray running one server with every scorer."""
    import ray
    from ray import serve

    from imagereward.runners.serve import build_app

    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        root = tmp_path_factory.mktemp("every-runner")
        originals, folders, direct = save_all(root)
        assert sorted(originals) == sorted(imagereward.available_models()), "a scorer has no tiny checkpoint"
        images = write_awkward_images(root / "images")
        int8 = {}  # calibrations of the models the int8 doors are checked with
        for name in INT8_DOORS:
            int8[name] = str(root / f"{name}-int8.json")
            scorer = imagereward.load(name, checkpoint=folders[name], device="cpu")
            calibrate(scorer, *_pairs(images)).save(int8[name])
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
                 runtime_env={"env_vars": ENV}, log_to_driver=False)
        port = _free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # One server holding every scorer, each its own deployment behind one ingress.
            models = [{"model": name, "checkpoint": folder} for name, folder in folders.items()]
            models += [{"model": name, "name": f"{name}-int8", "checkpoint": folders[name], "int8": int8[name]}
                       for name in INT8_DOORS]
            serve.run(build_app(dict(models=models, cpus_per_replica=0, gpus_per_replica=0, ingress_cpus=0,
                                     max_batch_size=32, batch_wait_ms=300)), name="every", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            yield {"root": root, "folders": folders, "direct": direct, "images": images, "url": url,
                   "originals": originals, "int8": int8}
        finally:
            serve.shutdown()
            ray.shutdown()

NAMES = imagereward.available_models()
# int8 through every door: a BLIP-based and an OpenCLIP-based scorer (the layers are shared).
INT8_DOORS = ("ImageReward-v1.0", "PickScore")


@pytest.fixture(scope="module")
def scorers(world):
    """Each scorer as every runner loads it: from its saved folder."""
    return {name: imagereward.load(name, checkpoint=folder, device="cpu")
            for name, folder in world["folders"].items()}


def _pairs(images: List[Path]):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    return prompts, [str(p) for p in images]


def _write_pairs(path: Path, prompts: List[str], paths: List[str], ids: bool = False) -> None:
    """A JSONL file of ``{"prompt", "image"}`` records (with ``"id"``: the row number)."""
    records = [{"prompt": p, "image": i} for p, i in zip(prompts, paths)]
    if ids:
        records = [{"id": str(n), **record} for n, record in enumerate(records)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


# Scores that are a learnt temperature (100) times a cosine range over +-100 whatever
# the random tiny weights give: float32 resolves their cosines to about 1e-7, i.e. 1e-5.
SCORE_RANGE = {"PickScore": 100.0, "MPS": 100.0}


def _close(got, expected, tolerance: float, what: str) -> None:
    """Within ``tolerance`` of the scores' scale: max |score|, at least 1, at least the
    scorer's range where it has one (:data:`SCORE_RANGE`; ``what`` starts with the name)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, what
    scale = max(_scale(expected), SCORE_RANGE.get(what.split(":")[0], 1.0))
    worst, bound = float(np.abs(got - expected).max()), tolerance * scale
    assert worst <= bound, f"{what}: max |difference| {worst:.3g} > {bound:.3g}"


def _scale(values) -> float:
    return max(1.0, float(np.abs(np.asarray(values)).max()))


@pytest.mark.parametrize("name", NAMES)
def test_saved_folder_scores_as_the_original_files(world, scorers, name):
    prompts, paths = _pairs(world["images"])
    _close(scorers[name].score_batch(prompts, paths), world["direct"][name].score_batch(prompts, paths),
           SAME_SHAPE, f"{name}: saved folder against the original files")
    assert scorers[name].preprocess.config == world["direct"][name].preprocess.config


@pytest.mark.parametrize("name", NAMES)
def test_convert_any_scorer_and_load_it_back(world, name, capsys, tmp_path):
    files, options = world["originals"][name]
    others = {role: path for role, path in files.items() if role != "weights"}
    prompts, paths = _pairs(world["images"])
    expected = world["direct"][name].score_batch(prompts, paths)
    out = imagereward.convert_checkpoint(files["weights"], str(tmp_path / "api"), name=name, files=others,
                                         dtype="fp32", **options)
    _close(imagereward.load(out, device="cpu").score_batch(prompts, paths), expected, SAME_SHAPE,
           f"{name}: convert_checkpoint, loaded back")
    if options:  # a tiny ImageReward or BLIP needs its config, which the command line does not take
        return
    extra = [a for role, path in others.items() for a in ("--checkpoint", f"{name}:{role}={path}")]
    code, _, err = run_cli(capsys, "convert", files["weights"], tmp_path / "cli", "--model", name, *extra)
    assert code == 0, err
    loaded = imagereward.load(str(tmp_path / "cli"), device="cpu")
    assert loaded.name == name
    _close(loaded.score_batch(prompts, paths), expected, SAME_SHAPE, f"{name}: imagereward convert, loaded back")


@pytest.mark.parametrize("name", NAMES)
def test_in_process_calls_agree(world, scorers, name):
    scorer = scorers[name]
    prompts, paths = _pairs(world["images"])
    pairs = scorer.score_batch(prompts, paths)
    singles = [scorer.score(p, i) for p, i in zip(prompts, paths)]
    _close(singles, pairs, 1e-5, f"{name}: score() against score_batch")
    ranked = scorer.rank(PROMPTS[0], paths)
    _close(ranked.rewards, scorer.score_batch([PROMPTS[0]] * len(paths), paths), SAME_SHAPE, f"{name}: rank")
    matrix = scorer.score_matrix(PROMPTS, paths)
    grid = scorer.score_batch([p for p in PROMPTS for _ in paths], paths * len(PROMPTS))
    _close(matrix.flatten().tolist(), grid, 1e-5, f"{name}: score_matrix against pairs")


@pytest.mark.parametrize("name", NAMES)
def test_cli_positional_and_batch_job(world, scorers, name, capsys, tmp_path):
    scorer = scorers[name]
    prompts, paths = _pairs(world["images"])
    folder = world["folders"][name]
    code, out, _ = run_cli(capsys, "score", "--model", name, "--checkpoint", folder, "--device", "cpu",
                           *[a for p in PROMPTS for a in ("-p", p)], "--json", *paths)
    assert code == 0
    records = json.loads(out)
    expected = scorer.score_matrix(PROMPTS, paths)
    got = [[r["reward"] for r in records if r["prompt"] == p] for p in PROMPTS]
    _close(got, expected.tolist(), SAME_SHAPE, f"{name}: imagereward score IMG... against score_matrix")

    pairs = tmp_path / "pairs.jsonl"
    _write_pairs(pairs, prompts, paths)
    output = tmp_path / "scores.jsonl"
    code, _, _ = run_cli(capsys, "score", "--model", name, "--checkpoint", folder, "--device", "cpu",
                         "--input", pairs, "--output", output, "--no-progress")
    assert code == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    _close([r["reward"] for r in rows], scorer.score_batch(prompts, paths), SAME_SHAPE,
           f"{name}: imagereward score --input against score_batch")


def test_score_dataset_every_scorer_in_one_job(world, scorers, capsys, tmp_path):
    files = [a for name, folder in world["folders"].items() for a in ("--checkpoint", f"{name}={folder}")]
    _score_dataset_as_in_process(world, scorers, files, capsys, tmp_path, "score-dataset")


def _score_dataset_as_in_process(world, scorers, options, capsys, tmp_path, what: str) -> None:
    """One ``score-dataset`` job with ``scorers``' models (and ``options``): each model's
    column equals its in-process ``score_batch``."""
    import pyarrow.parquet as pq

    prompts, paths = _pairs(world["images"])
    manifest = tmp_path / "pairs.jsonl"
    _write_pairs(manifest, prompts, paths, ids=True)
    code, _, err = run_cli(capsys, "score-dataset", manifest, "--output", tmp_path / "out",
                           "--models", ",".join(scorers), *options, "--no-progress")
    assert code == 0, err
    table = pq.read_table(tmp_path / "out").to_pandas().sort_values("id", key=lambda c: c.astype(int))
    for name, scorer in scorers.items():
        _close(table[name].tolist(), scorer.score_batch(prompts, paths), SAME_SHAPE,
               f"{name}: {what} against score_batch")


@pytest.mark.parametrize("name", NAMES)
def test_server_with_file_bytes_and_client_arrays(world, scorers, name):
    from imagereward.client import RewardClient

    scorer = scorers[name]
    prompts, paths = _pairs(world["images"])
    url = world["url"]
    body = {"prompts": prompts, "model": name,
            "images": [base64.b64encode(Path(p).read_bytes()).decode() for p in paths]}
    reply = httpx.post(url + "/score", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    expected = scorer.score_batch(prompts, paths)
    _close(reply.json()["scores"], expected, SAME_SHAPE, f"{name}: server, file bytes")

    with RewardClient(url) as client:
        pil = [Image.open(p) for p in paths]  # every mode as the files hold it: RGBA, P, CMYK, ...
        _close(client.score(prompts, pil, model=name), scorer.score_batch(prompts, pil), SAME_SHAPE,
               f"{name}: RewardClient, PIL images")
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        _close(client.score(prompts, arrays, model=name), scorer.score_batch(prompts, arrays), SAME_SHAPE,
               f"{name}: RewardClient, arrays")
        ranked = client.rank(PROMPTS[0], paths, model=name)
        _close(ranked.rewards, scorer.rank(PROMPTS[0], paths).rewards, SAME_SHAPE, f"{name}: /rank")
        _close(client.score_matrix(PROMPTS, paths, model=name), scorer.score_matrix(PROMPTS, paths).numpy(),
               SAME_SHAPE, f"{name}: /score_matrix")


def test_one_request_to_every_scorer_decodes_each_image_once(world, scorers):
    """/rewards with every registered scorer: each model's scores as its own score_batch, and
    each image opened once for all of them (the ingress's counter, not a timing)."""
    from imagereward.client import RewardClient

    prompts, paths = _pairs(world["images"])
    with RewardClient(world["url"]) as client:
        before = _decoded(world["url"])
        weights = {name: 0.5 + i for i, name in enumerate(NAMES)}
        result = client.rewards(prompts, paths, weights=weights)
        assert _decoded(world["url"]) - before == len(paths)
    assert sorted(result.scores) == sorted(NAMES) and result.normalize == "none"
    for name, scorer in scorers.items():
        _close(result.scores[name].tolist(), scorer.score_batch(prompts, paths), SAME_SHAPE,
               f"{name}: /rewards against score_batch")
    expected = sum(weights[name] * result.scores[name].astype(np.float64) for name in NAMES)
    np.testing.assert_allclose(result.reward, expected, rtol=1e-6, atol=1e-6)


def _decoded(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("imagereward_images_decoded_total "):
            return float(line.split()[1])
    raise AssertionError("no imagereward_images_decoded_total in /metrics")


@pytest.mark.parametrize("name", NAMES)
def test_refl_reward_on_pixels_at_the_scorers_resolution(world, scorers, name):
    scorer = scorers[name]
    prompts, paths = _pairs(world["images"])
    reward = Reward([(name, scorer, 1.0)])
    by_shape = {}  # a batch of generated images has one size; HPSv3's chain keeps each image's own
    for index, path in enumerate(paths):
        pixels = decode(scorer.preprocess, path)
        by_shape.setdefault(tuple(pixels.shape), []).append((index, pixels))
    if scorer.preprocess.fixed_size is None:
        # Qwen2-VL's resize rule is not idempotent (an image resized to 728x280, 203,840
        # pixels, would be resized again, as the original resizes tensors): compare at the
        # sizes it leaves as they are.
        by_shape = {shape: group for shape, group in by_shape.items()
                    if scorer.preprocess.native_size(shape[2], shape[1]) == (shape[2], shape[1])}
        assert by_shape, f"{name}: no image decodes to a size its chain keeps"
    for group in by_shape.values():
        decoded = torch.stack([pixels for _, pixels in group])
        chosen = [prompts[index] for index, _ in group]
        pixels = (decoded.float() / 255 if decoded.dtype == torch.uint8 else decoded).requires_grad_(True)
        values = reward(pixels, chosen)
        _close(values.detach().tolist(), scorer.score_pixels(chosen, decoded), SAME_SHAPE,
               f"{name}: ReFL reward against score_pixels")
        values.sum().backward()
        assert pixels.grad is not None and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_int8_every_scorer_in_process(world, scorers, name):
    """Calibrated on the images, int8 stays near float and a pair's reward does not depend
    on its batch; HPSv3 (Qwen2-VL's own layers) has no int8 layers and says so."""
    prompts, paths = _pairs(world["images"])
    scorer = imagereward.load(name, checkpoint=world["folders"][name], device="cpu")
    if name == "HPSv3":
        with pytest.raises(CalibrationError, match="ran no linear layer that int8 can take"):
            calibrate(scorer, prompts, paths)
        return
    expected = np.asarray(scorer.score_batch(prompts, paths))
    quantize_int8(scorer, calibrate(scorer, prompts, paths))
    got = np.asarray(scorer.score_batch(prompts, paths))
    spread = float(expected.max() - expected.min())
    assert 0 < np.abs(got - expected).max() < 0.2 * spread, f"{name}: int8 {got} against float {expected}"
    alone = [scorer.score(p, i) for p, i in zip(prompts, paths)]
    _close(alone, got, 1e-5, f"{name}: int8 score() against score_batch")


@pytest.fixture(scope="module")
def int8_scorers(world):
    return {name: imagereward.load(name, checkpoint=world["folders"][name], device="cpu", int8=world["int8"][name])
            for name in INT8_DOORS}


@pytest.mark.parametrize("name", INT8_DOORS)
def test_int8_through_the_command_line_and_the_server(world, int8_scorers, name, capsys, tmp_path):
    from imagereward.client import RewardClient

    scorer = int8_scorers[name]
    prompts, paths = _pairs(world["images"])
    expected = scorer.score_batch(prompts, paths)
    float_scores = imagereward.load(name, checkpoint=world["folders"][name], device="cpu").score_batch(prompts, paths)
    assert np.abs(np.asarray(expected) - np.asarray(float_scores)).max() > 1e-4, f"{name}: int8 did not run"
    common = ["--model", name, "--checkpoint", world["folders"][name], "--int8", world["int8"][name]]
    pairs = tmp_path / "pairs.jsonl"
    _write_pairs(pairs, prompts, paths)
    code, _, err = run_cli(capsys, "score", *common, "--input", pairs, "--output", tmp_path / "s.jsonl", "-q")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    _close([r["reward"] for r in rows], expected, SAME_SHAPE, f"{name}: imagereward score --int8 --input")
    code, out, err = run_cli(capsys, "rank", *common, "-p", PROMPTS[0], *paths, "--json")
    assert code == 0, err
    by_image = {r["image"]: r["reward"] for r in json.loads(out)}
    _close([by_image[p] for p in paths], scorer.rank(PROMPTS[0], paths).rewards, SAME_SHAPE,
           f"{name}: imagereward rank --int8")

    with RewardClient(world["url"]) as client:
        _close(client.score(prompts, paths, model=f"{name}-int8"), expected, SAME_SHAPE, f"{name}: int8 server")
    ready = httpx.get(world["url"] + "/readyz", timeout=10).json()["models"]
    assert ready[f"{name}-int8"]["int8"] and not ready[name]["int8"]


def test_int8_score_dataset(world, int8_scorers, capsys, tmp_path):
    files = [a for name in INT8_DOORS for a in ("--checkpoint", f"{name}={world['folders'][name]}",
                                                 "--int8", world["int8"][name])]
    _score_dataset_as_in_process(world, int8_scorers, files, capsys, tmp_path, "score-dataset --int8")
