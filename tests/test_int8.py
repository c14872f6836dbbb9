"""int8 scoring: calibration, its file, the int8 layers, and the command line.

On tiny random ImageReward models. The runners (score-dataset, the server) are checked
with int8 in test_every_runner.py; the error on full-size weights is measured by
benchmarks/int8_cost.py.
"""

from __future__ import annotations

import json

import pytest
import torch

import imagereward
from helpers import ASSETS, random_state_dict, run_cli
from imagereward.errors import CalibrationError
from imagereward.int8 import Int8Calibration, Int8Linear, QuantizedActivation, calibrate, quantize_int8

PROMPTS = ["a red bicycle", "a cat on a sofa", "a city at night in the rain", "a dog"]
IMAGES = [str(path) for path in ASSETS]


def _load(checkpoint, config, dtype="fp32", **options):
    return imagereward.load(str(checkpoint), config=config, device="cpu", dtype=dtype, **options)


@pytest.fixture
def calibration_file(checkpoint, config, tmp_path):
    path = tmp_path / "int8.json"
    calibrate(_load(checkpoint, config), PROMPTS, IMAGES).save(str(path))
    return path


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_int8_scores_follow_the_float_model(checkpoint, config, tmp_path, dtype):
    float_model = _load(checkpoint, config, dtype)
    expected = torch.tensor(float_model.score_batch(PROMPTS, IMAGES))
    calibration = calibrate(float_model, PROMPTS, IMAGES)
    assert float_model.int8_calibration is None, "calibrating must leave the model float"
    assert torch.equal(torch.tensor(float_model.score_batch(PROMPTS, IMAGES)), expected)
    # Every linear layer of both towers, and each MLP's GELU output handed on as uint8.
    assert len(calibration.ranges) == 2 * 4 + 2 * 10
    assert calibration.fused["blip.visual_encoder.blocks.0.mlp.fc1"] == "blip.visual_encoder.blocks.0.mlp.fc2"
    assert calibration.fused["blip.text_encoder.encoder.layer.1.intermediate.dense"] == \
        "blip.text_encoder.encoder.layer.1.output.dense"
    path = tmp_path / "int8.json"
    calibration.save(str(path))
    assert Int8Calibration.load(str(path)) == calibration

    model = _load(checkpoint, config, dtype, int8=str(path))
    assert "int8" in repr(model)
    got = torch.tensor(model.score_batch(PROMPTS, IMAGES))
    spread = float(expected.max() - expected.min())
    error = float((got - expected).abs().max())
    assert 0 < error < 0.5 * spread, (got, expected)  # int8 ran, and stayed near float


def test_int8_layers_run_and_hand_gelu_outputs_on_as_uint8(checkpoint, config, calibration_file, monkeypatch):
    model = _load(checkpoint, config, int8=str(calibration_file))
    calls, handed_on = [], []
    run = Int8Linear.__call__

    def counting(self, owner, x, *args, **kwargs):
        calls.append(owner)
        handed_on.append(isinstance(x, QuantizedActivation))
        return run(self, owner, x, *args, **kwargs)

    monkeypatch.setattr(Int8Linear, "__call__", counting)
    model.score_batch(PROMPTS, IMAGES)
    assert len(calls) == 28 and sum(handed_on) == 4
    # score_tensors keeps autograd on (ReFL's entry point): int8 still runs, the same numbers
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.score_tensors(pixels, PROMPTS[:2])
    calls.clear()
    assert torch.equal(model.score_tensors(pixels, PROMPTS[:2]), expected) and len(calls) == 28
    with pytest.raises(RuntimeError, match="int8 layers have no gradients"):
        model.score_tensors(pixels.requires_grad_(True), PROMPTS[:2])


def test_a_pairs_int8_reward_does_not_depend_on_its_batch(checkpoint, config, calibration_file):
    """Static scales and exact int32 sums: alone or in a batch, prompts of any length
    (the text tower projects keys and values in int8 for every shape)."""
    model = _load(checkpoint, config, int8=str(calibration_file))
    together = model.score_batch(PROMPTS, IMAGES)
    alone = [model.score_batch([p], [i])[0] for p, i in zip(PROMPTS, IMAGES)]
    assert alone == pytest.approx(together, abs=1e-5)


def test_calibration_is_refused_for_other_weights_models_or_files(checkpoint, config, calibration_file, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(random_state_dict(config, seed=7), other)
    with pytest.raises(CalibrationError, match="other ImageReward-v1.0 weights"):
        _load(other, config, int8=str(calibration_file))

    data = json.loads(calibration_file.read_text())
    for change, message in [({"model": "BLIP"}, "is for BLIP, not ImageReward-v1.0"),
                            ({"format": "x"}, "not an imagereward int8 calibration"),
                            ({"version": 9}, "version 9"),
                            ({"ranges": {"blip.visual_encoder.blocks.0.attn.qkv": [1.0, "x"]}}, "malformed"),
                            ({"ranges": {"blip.visual_encoder.blocks.0.attn.qkv": [2.0, 1.0]}}, "no finite range"),
                            ({"ranges": {"blip.nowhere": [0.0, 1.0]}, "fused": {}}, "does not have")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**data, **change}))
        with pytest.raises(CalibrationError, match=message):
            _load(checkpoint, config, int8=str(bad))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="junk.json cannot be read"):
        Int8Calibration.load(str(tmp_path / "junk.json"))
    with pytest.raises(CalibrationError, match="not found: .*missing.json"):
        Int8Calibration.load(str(tmp_path / "missing.json"))


def test_int8_is_refused_off_the_cpu_compiled_in_fp16_and_twice(checkpoint, config, calibration_file):
    with pytest.raises(ValueError, match="neither compile=True nor device 'meta'"):
        _load_on(checkpoint, config, calibration_file, device="meta")
    with pytest.raises(ValueError, match="neither compile=True"):
        _load(checkpoint, config, int8=str(calibration_file), compile=True)
    with pytest.raises(ValueError, match="fp32 or bf16 encoders, not torch.float16"):
        _load(checkpoint, config, "fp16", int8=str(calibration_file))
    model = _load(checkpoint, config, int8=str(calibration_file))
    with pytest.raises(ValueError, match="already int8"):
        calibrate(model, PROMPTS, IMAGES)
    with pytest.raises(ValueError, match="pairs"):
        calibrate(_load(checkpoint, config), PROMPTS, IMAGES[:2])
    quantize_int8(model, str(calibration_file))  # a second time replaces the plans: same scores
    assert model.score_batch(PROMPTS, IMAGES) == _load(checkpoint, config, int8=str(calibration_file)).score_batch(
        PROMPTS, IMAGES)


def _load_on(checkpoint, config, calibration_file, device):
    return imagereward.load(str(checkpoint), config=config, device=device, int8=str(calibration_file))


def test_cli_calibrate_then_score_with_int8(tiny_model, capsys, tmp_path):
    output = tmp_path / "tiny-int8.json"
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "-p", PROMPTS[0], "-p", PROMPTS[1],
                           *IMAGES, "--output", output, "--dtype", "fp32")
    assert code == 0, err
    assert "wrote" in err and json.loads(output.read_text())["pairs"] == 8

    code, out, err = run_cli(capsys, "score", "--checkpoint", tiny_model, "--int8", output, "-p", PROMPTS[0],
                             *IMAGES, "--json")
    assert code == 0, err
    expected = imagereward.load(str(tiny_model), int8=str(output)).score_batch([PROMPTS[0]] * 4, IMAGES)
    assert [r["reward"] for r in json.loads(out)] == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(imagereward.load(str(tiny_model)).score_batch([PROMPTS[0]] * 4, IMAGES),
                                     abs=1e-6)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "image": i}) + "\n" for p, i in zip(PROMPTS, IMAGES)))
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "--input", pairs, "--pairs", "2",
                           "--output", tmp_path / "two.json", "-q", "--dtype", "fp32")
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "two.json").read_text())["pairs"] == 2


@pytest.mark.parametrize("extra, code, message", [
    (["--model", "CLIP"], 2, "calibration of ImageReward-v1.0, which is not among the models run here"),
    (["--device", "cuda"], 2, "--int8 runs on the CPU, not --device cuda"),
    (["--compile"], 2, "--int8 and --compile do not go together"),
    (["--dtype", "fp16"], 2, "--int8 goes with --dtype bf16"),
])
def test_cli_int8_errors(tiny_model, calibration_file, capsys, extra, code, message):
    got, _, err = run_cli(capsys, "score", "--checkpoint", tiny_model, "--int8", calibration_file,
                          "-p", "x", IMAGES[0], *extra)
    assert got == code and message in err, err


def test_cli_int8_file_errors(tiny_model, capsys, tmp_path):
    code, _, err = run_cli(capsys, "score", "--checkpoint", tiny_model, "--int8", tmp_path / "none.json",
                           "-p", "x", IMAGES[0])
    assert code == 3 and "int8 calibration not found" in err
    # A calibration of other weights (the conftest checkpoint is not tiny_model's).
    other = tmp_path / "other.json"
    code, _, _ = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "-p", "x", IMAGES[0], "-o", other, "-q")
    assert code == 0
    data = json.loads(other.read_text())
    other.write_text(json.dumps({**data, "fingerprint": "0" * 32}))
    code, _, err = run_cli(capsys, "score", "--checkpoint", tiny_model, "--int8", other, "-p", "x", IMAGES[0])
    assert code == 3 and "made for other ImageReward-v1.0 weights" in err
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "-o", other)
    assert code == 2 and "give --input FILE, or --prompt" in err
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "-p", "x", tmp_path / "no.png", "-o", other)
    assert code == 3 and "image not found" in err


def test_refl_refuses_an_int8_reward_model(checkpoint, config, calibration_file):
    from imagereward.refl.reward import Reward

    with pytest.raises(ValueError, match="runs in int8, which has no gradients"):
        Reward([("ImageReward-v1.0", _load(checkpoint, config, int8=str(calibration_file)), 1.0)])


def test_runners_keep_int8_models_on_cpus(calibration_file):
    """int8 replicas and actors default to no GPU, and refuse one given; fp16 is refused."""
    pytest.importorskip("ray.serve")
    from pydantic import ValidationError

    from imagereward.runners.dataset import DatasetJob
    from imagereward.runners.serve import ServeSettings
    from imagereward.spec import ModelSpec

    settings = ServeSettings.model_validate({"model": "ImageReward-v1.0", "int8": str(calibration_file)})
    spec = settings.models[0].spec("cpu")
    assert spec.options["int8"] == str(calibration_file)
    assert settings.models[0].label == spec.label == "ImageReward-v1.0 [int8]"  # never passed off as exact
    for bad, message in [({"gpus_per_replica": 1}, "gpus_per_replica must be 0"),
                         ({"dtype": "fp16"}, "not fp16")]:
        with pytest.raises(ValidationError, match=message):
            ServeSettings.model_validate({"model": "ImageReward-v1.0", "int8": str(calibration_file), **bad})
    with pytest.raises(ValidationError, match="give each model's int8 in its own entry"):
        ServeSettings.model_validate({"models": "ImageReward-v1.0,CLIP", "int8": str(calibration_file)})
    spec = ModelSpec("ImageReward-v1.0", options={"int8": str(calibration_file)})
    with pytest.raises(ValueError, match="gpus_per_actor must be 0"):
        DatasetJob(input="in.jsonl", output="out", models=[spec], gpus_per_actor=1.0)


def test_on_a_cluster_with_gpus_float_replicas_take_one_and_int8_ones_none(calibration_file, monkeypatch):
    """The server's default placement (the data-set job shares the rule: runners.placement)."""
    pytest.importorskip("ray.serve")
    from imagereward.runners.placement import default_gpus
    from imagereward.runners.serve import app

    assert [default_gpus(4, False), default_gpus(4, True), default_gpus(0, False)] == [1.0, 0.0, 0.0]
    monkeypatch.setattr(app, "_cluster_gpus", lambda: 4.0)
    built = app.build_app({"models": [{"model": "ImageReward-v1.0", "int8": str(calibration_file)},
                                      {"model": "ImageReward-v1.0", "name": "float"}]})
    _, models = built._bound_deployment.init_args
    gpus = {key: model._bound_deployment.ray_actor_options["num_gpus"] for key, model in models.items()}
    assert gpus == {"ImageReward-v1.0": 0.0, "float": 1.0}


@pytest.mark.parametrize("command, extra", [("score-dataset", ["--gpus-per-actor", "1"]),
                                            ("serve", ["--gpus-per-replica", "1"])])
def test_cli_runners_refuse_int8_on_gpus(tiny_model, calibration_file, capsys, tmp_path, command, extra):
    target = [tmp_path / "in.jsonl", "--output", tmp_path / "out"] if command == "score-dataset" else []
    code, _, err = run_cli(capsys, command, *target, "--checkpoint", tiny_model, "--int8", calibration_file, *extra)
    assert code == 2 and "--int8 runs on CPUs" in err, err


def test_a_dataset_job_does_not_resume_with_another_calibration(calibration_file, tmp_path):
    pytest.importorskip("ray.data")
    from imagereward.runners.dataset import DatasetInputError, DatasetJob
    from imagereward.spec import ModelSpec

    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"id": "0", "prompt": "a dog", "image": IMAGES[0]}) + "\n")
    out = tmp_path / "out"
    DatasetJob(input=str(manifest), output=str(out), models=[ModelSpec("ImageReward-v1.0")]).open_ledger()
    int8 = ModelSpec("ImageReward-v1.0", options={"int8": str(calibration_file)})
    with pytest.raises(DatasetInputError, match="different job"):
        DatasetJob(input=str(manifest), output=str(out), models=[int8]).open_ledger()


def test_cli_calibrate_shows_progress(tiny_model, capsys, tmp_path):
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", tiny_model, "-p", "a", "-p", "b", *IMAGES,
                           "--batch-size", "2", "-o", tmp_path / "c.json")
    assert code == 0 and "calibrating" in err and "8/8" in err, err


def test_int8_says_so_when_torch_lacks_the_int8_ops(checkpoint, config, calibration_file, monkeypatch):
    import imagereward.int8 as int8

    monkeypatch.setattr(int8, "_onednn_int8_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs oneDNN's int8 linear ops"):
        _load(checkpoint, config, int8=str(calibration_file))


def test_reward_stats_measures_an_int8_model_in_int8(tiny_model, capsys, tmp_path):
    """z-scores of an int8 server model need statistics of its int8 scores."""
    import numpy as np

    calibration = tmp_path / "int8.json"
    calibrate(imagereward.load(str(tiny_model)), PROMPTS, IMAGES).save(str(calibration))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "image": i}) + "\n" for p, i in zip(PROMPTS, IMAGES)))
    means = {}
    for name, extra in (("float", []), ("int8", ["--int8", calibration])):
        output = tmp_path / f"stats-{name}.json"
        code, out, err = run_cli(capsys, "reward-stats", pairs, "--models", "ImageReward-v1.0",
                                 "--checkpoint", tiny_model, "--output", output, *extra)
        assert code == 0, err
        assert ("[int8]" in out + err) == (name == "int8")
        means[name] = json.loads(output.read_text())["models"]["ImageReward-v1.0"]["mean"]
    expected = np.mean(imagereward.load(str(tiny_model), int8=str(calibration)).score_batch(PROMPTS, IMAGES))
    assert means["int8"] == pytest.approx(float(expected), abs=1e-5)
    assert means["int8"] != pytest.approx(means["float"], abs=1e-5)
