"""One ReFL step of ours against the original ``ImageReward/ReFL.py`` (image-reward 1.5).

    python benchmarks/refl_parity.py [--workdir .bench/refl-parity] [--stand-in-reward]

Both sides get the same tiny random Stable Diffusion pipeline (a diffusers folder both
diffusers 0.25.1 and ours read), the same random ImageReward checkpoint (written by the
reference's own classes, the published med_config, a small head so rewards stay below the
margin 2 and the loss is not zero), the same two prompts, the same initial latents, the
same DDPM noise and the same stop step; the pretraining loss is off (the original has
none). The original's trainer runs its own step (see refl_reference_side.py); ours runs
:func:`imagereward.refl.algorithm.reward_step`. Exit status 1 when the loss or the UNet
gradient differs by more than 1e-4 relative.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import refenv
from fixtures import write_med_config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
TOLERANCE = 1e-4
SEED = 1234
PROMPTS = ["a red cat on a blue house", "a green tree under the moon"]


def make_inputs(workdir: Path, stand_in: bool) -> dict:
    from refl_helpers import build_tiny_pipeline

    pipeline = workdir / "tiny-sd"
    if not pipeline.exists():
        build_tiny_pipeline(workdir, latent_size=64, vae_blocks=1)  # the original draws 64x64 latents
    med_config = write_med_config(workdir)
    checkpoint = workdir / "ImageReward.pt"
    if not checkpoint.exists() and not stand_in:
        refenv.run_reference("make-imagereward", {"out": str(checkpoint), "med_config": str(med_config),
                                                  "seed": 0, "head_scale": 1.0}, workdir)
    prompts = workdir / "prompts.json"
    prompts.write_text(json.dumps([{"text": p, "image": str(i)} for i, p in enumerate(PROMPTS)]))
    return {"pipeline": str(pipeline), "checkpoint": str(checkpoint), "med_config": str(med_config),
            "prompts": str(prompts), "stand_in": stand_in}


def run_reference(inputs: dict, workdir: Path, threads: int) -> dict:
    request = {**inputs, "seed": SEED, "output_dir": str(workdir / "reference-out"), "threads": threads,
               "gradient_out": str(workdir / "reference-grad.pt")}
    (workdir / "refl.request.json").write_text(json.dumps(request))
    env = refenv.offline_env(workdir)
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(HERE)
    subprocess.run([refenv.reference_python(), str(HERE / "refl_reference_side.py"),
                    str(workdir / "refl.request.json"), str(workdir / "refl.reply.json")],
                   check=True, env=env, cwd=str(workdir))
    reply = json.loads((workdir / "refl.reply.json").read_text())
    reply["gradient"] = torch.load(request["gradient_out"], weights_only=True)
    return reply


def run_ours(inputs: dict, prompts: list, stop_index: int, threads: int) -> dict:
    import diffusers

    import imagereward
    from imagereward.config import PreprocessConfig
    from imagereward.preprocess import ImagePreprocessor
    from imagereward.refl.algorithm import make_sampler, reward_step
    from imagereward.refl.pipeline import TextConditioner, load_pipeline
    from imagereward.refl.reward import Reward

    torch.set_num_threads(threads)
    pipe = load_pipeline(inputs["pipeline"])
    unet = pipe.unet.train().requires_grad_(True)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    if inputs["stand_in"]:  # the reference side's StandInReward: mean of the preprocessed image
        preprocess = ImagePreprocessor(PreprocessConfig(image_size=224))
        reward = lambda pixels, _: preprocess.tensor_transform(pixels).mean(dim=(1, 2, 3))  # noqa: E731
    else:
        scorer = imagereward.load(inputs["checkpoint"], device="cpu", med_config=inputs["med_config"],
                                  vocab_file=str(refenv.BERT_VOCAB))
        scorer.requires_grad_(False)
        reward = Reward([("ImageReward", scorer, 1.0)])
    cond = TextConditioner(pipe, 64)(prompts)
    generator = torch.Generator().manual_seed(SEED)
    latents = torch.randn((len(prompts), 4, 64, 64), generator=generator)
    sampler = make_sampler("ddpm", pipe.scheduler.config)
    loss, rewards = reward_step(unet, pipe.vae, sampler, reward, prompts, cond, None, latents, stop_index,
                                num_steps=40, guidance_scale=1.0, margin=2.0, grad_scale=1e-3,
                                generator=generator)
    loss.backward()
    gradient = {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "rewards": rewards.tolist(), "gradient": gradient,
            "diffusers": diffusers.__version__, "torch": torch.__version__}


def batch_prompts(pipeline: str, input_ids: list) -> list:
    """The reference's batch order (its data loader shuffles): match CLIP ids to the prompts."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    ids = {tuple(tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids): p
           for p in PROMPTS}
    return [ids[tuple(row)] for row in input_ids]


def compare(ours: dict, reference: dict) -> dict:
    go, gr = ours["gradient"], reference["gradient"]
    if go.keys() != gr.keys():
        raise SystemExit(f"gradient names differ: {sorted(set(go) ^ set(gr))[:5]}")
    diff_sq = sum(float((go[k].double() - gr[k].double()).pow(2).sum()) for k in gr)
    ref_sq = sum(float(gr[k].double().pow(2).sum()) for k in gr)
    worst = max(float((go[k].double() - gr[k].double()).norm() / gr[k].double().norm().clamp_min(1e-30))
                for k in gr if gr[k].abs().max() > 0)
    max_abs = max(float((go[k] - gr[k]).abs().max()) for k in gr)
    max_ref = max(float(gr[k].abs().max()) for k in gr)
    return {
        "loss_ours": ours["loss"], "loss_reference": reference["loss"],
        "loss_relative_difference": abs(ours["loss"] - reference["loss"]) / abs(reference["loss"]),
        "rewards_ours": ours["rewards"], "rewards_reference": reference["rewards"],
        "gradient_relative_l2": (diff_sq / ref_sq) ** 0.5,
        "gradient_worst_tensor_relative_l2": worst,
        "gradient_max_abs_difference_over_max_abs": max_abs / max_ref,
        "gradient_tensors": len(gr), "gradient_norm_reference": ref_sq ** 0.5,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--workdir", default=".bench/refl-parity")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stand-in-reward", action="store_true",
                        help="a cheap check of everything but the reward network (no 1.8 GB checkpoint)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(workdir, args.stand_in_reward)
    reference = run_reference(inputs, workdir, args.threads)
    prompts = batch_prompts(inputs["pipeline"], reference["input_ids"])
    ours = run_ours(inputs, prompts, reference["stop_index"], args.threads)
    result = compare(ours, reference)
    result.update(reward="stand-in (mean of the preprocessed image)" if args.stand_in_reward else "ImageReward",
                  stop_index=reference["stop_index"], prompts=prompts,
                  machine={"platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "threads": args.threads},
                  versions={"ours": {"torch": ours["torch"], "diffusers": ours["diffusers"]},
                            "reference": {"torch": reference["torch"], "diffusers": reference["diffusers"]}})
    print(json.dumps(result, indent=2))
    (workdir / "refl-parity.json").write_text(json.dumps(result, indent=2))
    ok = (result["loss_relative_difference"] <= TOLERANCE and result["gradient_relative_l2"] <= TOLERANCE
          and result["gradient_max_abs_difference_over_max_abs"] <= TOLERANCE)
    print("PASS" if ok else "FAIL", f"(tolerance {TOLERANCE} relative)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
