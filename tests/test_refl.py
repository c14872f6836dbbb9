"""ReFL on a tiny random Stable Diffusion pipeline and a tiny random ImageReward.

The runs use 8 sampler steps with the gradient step among the last 3 (the defaults,
40 and 10, are checked separately) so that a few dozen optimizer steps fit in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import DiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from helpers import BERT_VOCAB, save_tiny_model  # noqa: E402
from refl_helpers import build_tiny_pipeline, write_pairs, write_prompts  # noqa: E402
from imagereward.refl import ReFLConfig, generate_images, heldout_denoising_loss, read_pairs, train_refl  # noqa: E402
from imagereward.refl.algorithm import draw_stop_index  # noqa: E402
from imagereward.refl.reward import Reward  # noqa: E402
from imagereward.errors import OptionsError  # noqa: E402
from imagereward.refl.trainer import CHECKPOINT_FILE, ReFLTrainer  # noqa: E402
from imagereward.train.logs import read_log  # noqa: E402
from imagereward.train.state import load_checkpoint  # noqa: E402

RESOLUTION = 16  # 8x8 latents, VAE downscale 2
STEPS = 30
# Stated margins, measured on this set-up: the reward of held-out prompts and seeds rose by
# 0.51 (reward only) and 0.52 (with the pretraining loss); the held-out denoising loss went
# from 1.114 to 1.239 (+11%) with the reward alone and down to 0.628 with the pretraining loss.
MIN_REWARD_GAIN = 0.25
MIN_DRIFT_WITHOUT_PRETRAINING = 1.08
MAX_DRIFT_WITH_PRETRAINING = 1.0
TOLERANCE = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _offline_module():
    """conftest's offline settings, also for the module-scoped training runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("IMAGEREWARD_OFFLINE", "1")
        patch.setenv("IMAGEREWARD_BERT_VOCAB", str(BERT_VOCAB))
        torch.set_num_threads(1)
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refl")
    pipeline = build_tiny_pipeline(root, latent_size=8)
    reward_model = save_tiny_model(root)
    write_prompts(root / "prompts.json", 16, seed=0)
    held_out = write_prompts(root / "held_out.json", 8, seed=1)
    write_pairs(root / "pairs", 16, RESOLUTION, seed=0)
    write_pairs(root / "held_out_pairs", 8, RESOLUTION, seed=1)
    return {"root": root, "pipeline": str(pipeline), "reward": reward_model, "held_out": held_out,
            "prompts": str(root / "prompts.json"), "pairs": str(root / "pairs"),
            "held_out_pairs": read_pairs(str(root / "held_out_pairs"))}


def config(setup, output_dir, **overrides) -> ReFLConfig:
    values = dict(model=setup["pipeline"], prompts=setup["prompts"], pretrain_data=setup["pairs"],
                  reward=setup["reward"], lr=1e-3, max_steps=STEPS, gradient_accumulation_steps=1,
                  num_inference_steps=8, stop_steps=3, margin=100.0, checkpoint_every=0,
                  output_dir=str(output_dir))
    values.update(overrides)
    return ReFLConfig(**values)


def measure(setup, folder):
    """Mean reward of held-out prompts at fixed seeds, and the held-out denoising loss."""
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pixels = generate_images(pipe, setup["held_out"], 7, resolution=RESOLUTION, num_steps=8)
    reward = Reward.load(setup["reward"], torch.device("cpu"))
    with torch.no_grad():
        mean = reward(pixels, setup["held_out"]).mean().item()
    return mean, heldout_denoising_loss(pipe, setup["held_out_pairs"], RESOLUTION, seed=3)


@pytest.fixture(scope="module")
def runs(setup):
    """The base pipeline, and ReFL without and with the pretraining loss (30 steps each)."""
    root = setup["root"]
    train_refl(config(setup, root / "reward-only", pretrain_loss=False))
    train_refl(config(setup, root / "with-pretraining"))
    return {name: measure(setup, folder) for name, folder in
            [("base", setup["pipeline"]), ("reward-only", root / "reward-only"),
             ("with-pretraining", root / "with-pretraining")]}


def test_default_stop_step_is_uniform_over_the_last_ten_of_forty():
    generator = torch.Generator().manual_seed(0)
    draws = [draw_stop_index(40, 10, generator) for _ in range(2000)]
    assert set(draws) == set(range(30, 40))
    assert max(draws.count(i) for i in range(30, 40)) < 260  # about 200 each


@pytest.mark.parametrize("lora", [False, True])
def test_reward_gradient_reaches_only_the_trainable_unet_weights(setup, tmp_path, lora):
    trainer = ReFLTrainer(config(setup, tmp_path, lora=lora, num_inference_steps=40, stop_steps=10))
    out = trainer.reward_micro(step=0, micro=0)
    assert 30 <= out["stop"] <= 39
    out["loss"].backward()
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    trainable = {name for name, _ in trainer.trainable}
    with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
    nonzero = {n for n, p in unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    if lora:  # LoRA's B starts at zero, so at the first step only B gets a non-zero gradient
        assert trainable and all("lora" in name for name in trainable)
        assert nonzero == {n for n in trainable if "lora_B" in n}
    else:
        assert trainable == {n for n, _ in unet.named_parameters()} == nonzero
    frozen = [trainer.pipe.vae, trainer.pipe.text_encoder] + [m for _, m, _ in trainer.reward.models]
    for module in frozen:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


def test_reward_of_held_out_prompts_rises(runs):
    base, reward_only, with_pretraining = runs["base"][0], runs["reward-only"][0], runs["with-pretraining"][0]
    print(f"held-out reward: base {base:.3f}, reward only {reward_only:.3f}, "
          f"with pretraining loss {with_pretraining:.3f}")
    assert reward_only >= base + MIN_REWARD_GAIN
    assert with_pretraining >= base + MIN_REWARD_GAIN


def test_pretraining_loss_keeps_the_denoising_loss_from_drifting(runs, setup):
    base, reward_only, with_pretraining = (runs[k][1] for k in ("base", "reward-only", "with-pretraining"))
    print(f"held-out denoising loss: base {base:.3f}, reward only {reward_only:.3f}, "
          f"with pretraining loss {with_pretraining:.3f}")
    assert reward_only >= base * MIN_DRIFT_WITHOUT_PRETRAINING
    assert with_pretraining <= base * MAX_DRIFT_WITH_PRETRAINING
    log = read_log(str(setup["root"] / "with-pretraining" / "refl_log.jsonl"))
    steps = [r for r in log if r["type"] == "train"]
    assert len(steps) == STEPS and all(r["pretrain_loss"] is not None and r["reward_loss"] > 0 for r in steps)
    settings = json.loads((setup["root"] / "with-pretraining" / "refl_config.json").read_text())
    assert settings["refl"]["pretrain_loss"] and settings["steps"] == STEPS and settings["output"] == "pipeline"


class Crash(RuntimeError):
    pass


def crash_at(step):
    def on_record(record):
        if record["type"] == "train" and record["step"] == step:
            raise Crash(f"killed at step {step}")
    return on_record


def test_killed_and_resumed_run_ends_with_the_same_weights(setup, tmp_path):
    options = dict(max_steps=6, checkpoint_every=2, gradient_accumulation_steps=2, ema=True, ema_decay=0.9,
                   lr_schedule="cosine", warmup_steps=1)
    reference = train_refl(config(setup, tmp_path / "a", **options))
    assert reference.finished

    with pytest.raises(Crash):
        train_refl(config(setup, tmp_path / "b", **options), on_record=crash_at(5))
    assert load_checkpoint(str(tmp_path / "b" / CHECKPOINT_FILE))["step"] == 4
    with pytest.raises(OptionsError, match="pass --resume"):
        train_refl(config(setup, tmp_path / "b", **options))
    with pytest.raises(OptionsError, match="other values of lr"):
        train_refl(config(setup, tmp_path / "b", **{**options, "lr": 5e-4}, resume=True))
    prompts = Path(setup["prompts"])  # the same files, spelled differently, are the same run
    respelled = dict(prompts=os.path.relpath(prompts), pretrain_data=str(Path(setup["pairs"]).parent / "." /
                                                                         Path(setup["pairs"]).name))
    resumed = train_refl(config(setup, tmp_path / "b", **options, **respelled, resume=True))
    assert resumed.finished and resumed.steps == 6

    a = load_file(str(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors"))
    difference = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"resume: max weight difference {difference:.3g}")
    assert a.keys() == b.keys() and difference <= TOLERANCE
    strip = lambda path: [(r["step"], round(r["reward_loss"], 9), round(r["pretrain_loss"], 7))  # noqa: E731
                          for r in read_log(str(path / "refl_log.jsonl")) if r["type"] == "train"]
    assert strip(tmp_path / "b") == strip(tmp_path / "a")

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "b"))
    images = pipe("a red cat", num_inference_steps=4, guidance_scale=1.0, output_type="np").images
    assert images.shape == (1, RESOLUTION, RESOLUTION, 3)


def test_lora_adapters_start_from_the_runs_seed(setup, tmp_path):
    first = dict(ReFLTrainer(config(setup, tmp_path / "a", lora=True, seed=3)).trainable)
    torch.rand(100)  # whatever else drew from the global generator in between
    second = dict(ReFLTrainer(config(setup, tmp_path / "b", lora=True, seed=3)).trainable)
    other = dict(ReFLTrainer(config(setup, tmp_path / "c", lora=True, seed=4)).trainable)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_cli_lora_run_writes_weights_the_base_pipeline_loads(setup, tmp_path, capsys):
    from imagereward.cli import main

    validation = tmp_path / "validation.txt"
    validation.write_text("a red cat\na blue dog\n")
    code = main(["refl", "--model", setup["pipeline"], "--prompts", setup["prompts"], "--no-pretrain-loss",
                 "--reward", setup["reward"], "--lora", "--lora-rank", "4", "--max-steps", "2", "--lr", "1e-2",
                 "--margin", "100",
                 "--gradient-accumulation-steps", "1", "--num-inference-steps", "4", "--stop-steps", "2",
                 "--validation-prompts", str(validation), "--validation-every", "1",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0
    out = tmp_path / "out"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-000000.png", "step-000001.png", "step-000002.png"]
    assert (out / "refl_progress.png").is_file()
    valid = [r for r in read_log(str(out / "refl_log.jsonl")) if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [0, 1, 2] and all(len(r["rewards"]) == 2 for r in valid)

    pipe = DiffusionPipeline.from_pretrained(setup["pipeline"])
    before = pipe("a red cat", num_inference_steps=4, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(out))
    after = pipe("a red cat", num_inference_steps=4, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert after.shape == before.shape and abs(after - before).max() > 0


def test_cli_refuses_missing_pretraining_data_and_bad_inputs(setup, tmp_path, capsys):
    from imagereward.cli import main

    code = main(["refl", "--model", setup["pipeline"], "--prompts", setup["prompts"]])
    assert code == 2
    assert "pretrain_data" in capsys.readouterr().err
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a cat"}\nnot json\n')
    code = main(["refl", "--model", setup["pipeline"], "--prompts", str(bad), "--no-pretrain-loss",
                 "--reward", setup["reward"], "--output-dir", str(tmp_path / "out")])
    assert code == 3
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    code = main(["refl", "--model", setup["pipeline"], "--prompts", str(tmp_path / "missing.json"),
                 "--no-pretrain-loss", "--reward", setup["reward"], "--output-dir", str(tmp_path / "out")])
    assert code == 3
    assert "missing.json" in capsys.readouterr().err


def test_sdxl_pipeline_trains_and_its_output_generates(setup, tmp_path):
    from refl_helpers import build_tiny_sdxl_pipeline

    folder = build_tiny_sdxl_pipeline(tmp_path)
    trainer = ReFLTrainer(config(setup, tmp_path / "out", model=str(folder), max_steps=2, pretrain_loss=True))
    assert trainer.conditioner.sdxl and trainer.resolution == RESOLUTION
    before = {n: p.detach().clone() for n, p in trainer.trainable}
    for step in range(2):
        record = trainer.train_step(step)
    assert record["reward_loss"] > 0 and record["pretrain_loss"] > 0
    changed = [n for n, p in trainer.trainable if not torch.equal(p, before[n])]
    assert "add_embedding.linear_1.weight" in changed  # the pooled-text / size-id path learns too
    trainer.save_output(2)
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "out"))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    images = pipe("a red cat", num_inference_steps=3, guidance_scale=1.0, output_type="np").images
    assert images.shape == (1, RESOLUTION, RESOLUTION, 3)


def test_two_processes_compute_what_one_process_with_twice_the_accumulation_does(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo) against one process accumulating 2 micro-batches."""
    import os
    import subprocess
    import sys

    options = dict(max_steps=2, num_inference_steps=4, stop_steps=2, checkpoint_every=0)
    train_refl(config(setup, tmp_path / "one", gradient_accumulation_steps=2, **options))
    flags = ["--model", setup["pipeline"], "--prompts", setup["prompts"], "--pretrain-data", setup["pairs"],
             "--reward", setup["reward"], "--lr", "1e-3", "--margin", "100", "--gradient-accumulation-steps", "1",
             "--max-steps", "2", "--num-inference-steps", "4", "--stop-steps", "2", "--checkpoint-every", "0",
             "--output-dir", str(tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "imagereward.refl", *flags], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip() == str(tmp_path / "two")  # printed once, by rank 0
    one = load_file(str(tmp_path / "one" / "unet" / "diffusion_pytorch_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "unet" / "diffusion_pytorch_model.safetensors"))
    difference = max((one[k].double() - two[k].double()).abs().max().item() for k in one)
    print(f"2 processes vs accumulation 2: max weight difference {difference:.3g}")
    assert difference <= 1e-5
    log_one = read_log(str(tmp_path / "one" / "refl_log.jsonl"))
    log_two = read_log(str(tmp_path / "two" / "refl_log.jsonl"))
    assert [r["reward_loss"] for r in log_two] == pytest.approx([r["reward_loss"] for r in log_one], rel=1e-5)


def test_bad_model_folders_and_unknown_rewards_are_one_line_errors(capsys, tmp_path, monkeypatch):
    from helpers import run_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = tmp_path / "prompts.json"
    prompts.write_text('["a cat"]')
    common = ["refl", "--prompts", prompts, "--no-pretrain-loss", "--output-dir", tmp_path / "out"]
    code, _, err = run_cli(capsys, *common, "--model", tmp_path, "--reward", "NoSuchReward")
    assert code == 2 and "names NoSuchReward" in err  # found before any pipeline loads
    code, _, err = run_cli(capsys, *common, "--model", tmp_path, "--reward", "ImageReward-v1.0")
    assert code == 3 and "not a diffusers pipeline folder" in err
    code, _, err = run_cli(capsys, *common, "--model", "nobody/no-such-model", "--reward", "ImageReward-v1.0")
    assert code == 3 and err.count("\n") == 1 and "Warning" not in err and "nobody/no-such-model" in err
