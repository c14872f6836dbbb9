"""ReFL on one GPU: seconds per step and peak memory, ours (full, LoRA) against the original's step.

    python benchmarks/refl_gpu.py --out results/          # on a GPU machine, about 5-8 minutes
    python benchmarks/refl_gpu.py --tiny --device cpu --steps 2 --out /tmp/x   # a dry run on a CPU
        [--reference-stand-in]      # the reference's step too, with a stand-in reward instead of ViT-L

Set-up, all in this command: a Stable-Diffusion-1.5-sized pipeline with random weights
(UNet 860M, VAE, CLIP ViT-L text encoder; 512 px, 64x64 latents) written as a diffusers
folder, and a full-size random ImageReward (ViT-L + BERT-base) in the original ``.pt``
format. Each variant runs in a fresh process: warm-up steps, then ``--steps`` timed
optimizer steps of batch 2 (one micro-step each), 40 sampler steps, the gradient step
among the last 10, fp16 mixed precision and gradient checkpointing (the original
script's defaults); peak memory is ``torch.cuda.max_memory_allocated``.

* ``ours-full``, ``ours-lora`` (rank 4), ``ours-full+pretraining`` (alternate mode);
* ``reference``: ``ImageReward/ReFL.py``'s ``Trainer.train`` as its script runs it, timed
  between optimizer steps (see refl_reference_side.py). It needs image-reward 1.5 with
  diffusers 0.25.1, transformers 4.36.2, accelerate 0.26.1 and datasets 2.16.1: the
  interpreter of ``--reference-python`` (default: the reference venv of refenv.py; on a
  machine without network, point it at a Python whose path holds those packages, or pass
  ``--skip-reference``).

Stop steps are drawn at random on both sides, so single steps differ by up to a quarter
in sampler work (30 to 39 no-grad UNet calls); means over the timed steps are compared.
Writes ``refl_gpu.json`` and ``refl_gpu.md`` under ``--out``. Needs diffusers, transformers,
accelerate and peft for ours (``pip install -e .[refl]``), and the shared data folder (BERT
vocabulary, CLIP BPE) at ``../shared`` or ``$IMAGEREWARD_SHARED``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
VARIANTS = {
    "ours-full": {"lora": False},
    "ours-lora": {"lora": True, "lora_rank": 4},
    "ours-full+pretraining": {"lora": False, "pretrain_loss": True},
}
PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a lighthouse at dusk",
           "a bowl of fruit on a wooden table, studio lighting", "a city street at night in the rain"]


def make_inputs(workdir: Path, tiny: bool, reference_checkpoint: str) -> Dict[str, str]:
    """The random pipeline, random reward weights, prompts and (image, caption) pairs.

    Full size: one random ``ImageReward.pt`` (ViT-L + BERT-base) for both sides. Tiny: a
    tiny reward for ours; the reference (whose ViT is always ViT-L) gets
    ``reference_checkpoint`` or is skipped; its step on these tiny 32 px images then still
    draws 64x64 latents, which this tiny VAE decodes to 128 px.
    """
    import torch

    import imagereward
    from fixtures import write_med_config
    from helpers import random_state_dict, tiny_config
    from imagereward.config import ImageRewardConfig
    from refl_helpers import build_tiny_pipeline, write_pairs

    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = workdir / "tiny-sd"
    resolution = 32 if tiny else 512
    if not pipeline.exists():  # tiny: 16x16 latents, 32 px (the reference always draws 64x64 latents)
        build_tiny_pipeline(workdir, latent_size=16 if tiny else 64, vae_blocks=2, sd15_size=not tiny)
    config = tiny_config(224) if tiny else ImageRewardConfig()
    checkpoint = workdir / "ImageReward.pt"
    if not checkpoint.exists():
        torch.save(random_state_dict(config, head_scale=1.0), checkpoint)
    reward = str(checkpoint)
    if tiny:
        model = imagereward.load(str(checkpoint), device="cpu", config=config)
        reward = imagereward.save_pretrained(model, str(workdir / "reward"))
    prompts = workdir / "prompts.json"
    # the original's data loader also requires an "image" column, as in refl_data.json
    prompts.write_text(json.dumps([{"text": p, "image": str(i)} for i, p in enumerate(PROMPTS)]))
    pairs = write_pairs(workdir / "pairs", 8, resolution, seed=0)
    return {"pipeline": str(pipeline), "reward": reward, "prompts": str(prompts), "pairs": str(pairs),
            "checkpoint": reference_checkpoint if tiny else str(checkpoint),
            "med_config": str(write_med_config(workdir))}


def run_ours(variant: str, inputs: Dict[str, str], steps: int, warmup: int, device: str) -> Dict[str, Any]:
    """One variant in this process: warm-up and timed optimizer steps."""
    import torch

    from imagereward.refl import ReFLConfig
    from imagereward.refl.trainer import ReFLTrainer

    options = dict(VARIANTS[variant])
    pretraining = options.pop("pretrain_loss", False)
    cuda = device.startswith("cuda")
    config = ReFLConfig(model=inputs["pipeline"], prompts=inputs["prompts"], reward=inputs["reward"],
                        pretrain_loss=pretraining, pretrain_data=inputs["pairs"], train_batch_size=2,
                        gradient_accumulation_steps=1, max_steps=warmup + steps,
                        mixed_precision="fp16" if cuda else "no", gradient_checkpointing=True,
                        output_dir=str(Path(inputs["pipeline"]).parent / f"out-{variant}"), checkpoint_every=0,
                        **options)
    trainer = ReFLTrainer(config.validate())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds: List[float] = []
    for step in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        trainer.train_step(step)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    trainable = sum(p.numel() for _, p in trainer.trainable)
    return {"seconds_per_step": seconds, "peak_memory_gib": peak, "trainable_parameters": trainable,
            "torch": torch.__version__}


def run_reference(inputs: Dict[str, str], workdir: Path, steps: int, warmup: int, python: str,
                  cuda: bool, stand_in: bool = False) -> Dict[str, Any]:
    import refenv

    request = {**inputs, "mode": "timing", "steps": warmup + steps + 1, "stand_in": stand_in,
               "output_dir": str(workdir / "out-reference"),
               "extra_args": (["--mixed_precision", "fp16"] if cuda else []) + ["--gradient_checkpointing"]}
    (workdir / "timing.request.json").write_text(json.dumps(request))
    env = refenv.offline_env(workdir)
    env.update(HF_DATASETS_OFFLINE="1", PYTHONPATH=str(HERE))
    subprocess.run([python, str(HERE / "refl_reference_side.py"), str(workdir / "timing.request.json"),
                    str(workdir / "timing.reply.json")], check=True, env=env, cwd=str(workdir))
    reply = json.loads((workdir / "timing.reply.json").read_text())
    reply["seconds_per_step"] = reply["seconds_per_step"][warmup:]
    return reply


def machine(device: str) -> Dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": device}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def table(results: Dict[str, Any]) -> str:
    lines = ["| variant | s/step (mean) | peak GPU memory (GiB) | trainable params |", "|---|---|---|---|"]
    for name, row in results["variants"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | | |")
            continue
        mean = sum(row["seconds_per_step"]) / len(row["seconds_per_step"])
        peak = "n/a" if row.get("peak_memory_gib") is None else f"{row['peak_memory_gib']:.1f}"
        lines.append(f"| {name} | {mean:.2f} | {peak} | {row.get('trainable_parameters', '')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", default=".bench/refl-gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a dry run)")
    parser.add_argument("--reference-python", default="")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--reference-checkpoint", default="",
                        help="with --tiny: a full-size ImageReward.pt for the reference (else it is skipped)")
    parser.add_argument("--reference-stand-in", action="store_true",
                        help="a dry run of the reference's timing with a stand-in reward (no ViT-L)")
    parser.add_argument("--ours", default=",".join(VARIANTS), help="our variants to run (comma-separated)")
    parser.add_argument("--side", default="", help=argparse.SUPPRESS)  # internal: one variant of ours
    args = parser.parse_args()
    from helpers import BERT_VOCAB

    os.environ.setdefault("IMAGEREWARD_BERT_VOCAB", str(BERT_VOCAB))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(args.workdir).resolve() / ("tiny" if args.tiny else "sd15")
    out = Path(args.out)
    if args.side:
        inputs = json.loads((workdir / "inputs.json").read_text())
        reply = run_ours(args.side, inputs, args.steps, args.warmup, args.device)
        (workdir / f"{args.side}.json").write_text(json.dumps(reply))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(workdir, args.tiny, args.reference_checkpoint)
    (workdir / "inputs.json").write_text(json.dumps(inputs))
    results: Dict[str, Any] = {"machine": machine(args.device), "steps": args.steps, "warmup": args.warmup,
                               "tiny": args.tiny, "variants": {}}
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    for variant in [v for v in args.ours.split(",") if v]:
        command = [sys.executable, __file__, "--side", variant, "--out", str(out), "--workdir", args.workdir,
                   "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--tiny"] if args.tiny else []
        done = subprocess.run(command, env=env)
        path = workdir / f"{variant}.json"
        results["variants"][variant] = (json.loads(path.read_text()) if done.returncode == 0 and path.exists()
                                        else {"error": f"exit status {done.returncode}"})
        (out / "refl_gpu.json").write_text(json.dumps(results, indent=2))
    if not args.skip_reference and (inputs["checkpoint"] or args.reference_stand_in):
        import refenv

        python = args.reference_python or refenv.reference_python()
        name = "reference (stand-in reward)" if args.reference_stand_in else "reference"
        try:
            results["variants"][name] = run_reference(inputs, workdir, args.steps, args.warmup, python,
                                                      args.device.startswith("cuda"), args.reference_stand_in)
        except (subprocess.CalledProcessError, OSError, RuntimeError) as error:
            results["variants"][name] = {"error": str(error)}
    (out / "refl_gpu.json").write_text(json.dumps(results, indent=2))
    (out / "refl_gpu.md").write_text(table(results) + "\n")
    print(json.dumps(results["machine"]))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
