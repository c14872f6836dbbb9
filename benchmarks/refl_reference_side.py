"""Runs inside the reference environment: one step of the original ``ImageReward/ReFL.py`` Trainer.

Usage: python refl_reference_side.py REQUEST.json REPLY.json

Mode ``parity`` (default) runs one step with the probes below; mode ``timing`` runs
``steps`` steps as the script runs them and reports the time between optimizer steps and
the peak GPU memory.

The original trainer is built and run as its script runs it (``parse_args`` on a command
line, ``Trainer(...)``, ``train(args)`` for one optimizer step), with four probes and two
substitutions:

* ``RM.load("ImageReward-v1.0")`` (hard-coded in the trainer) loads the benchmark's random
  checkpoint with its med_config instead of downloading the real weights;
* ``Accelerator(logging_dir=...)``, which accelerate 0.26.1 no longer accepts, gets that
  directory through ``ProjectConfiguration.logging_dir`` instead (without this the original
  trainer cannot be constructed at all in its own pinned environment);
* a forward pre-hook on the text encoder seeds torch's and Python's global generators right
  before the step's latents and stop step are drawn, so the other side can repeat them;
* ``random.randint`` records the stop step; ``score_gard`` records the rewards;
  ``accelerator.backward`` records the loss; ``optimizer.step`` saves the UNet gradient
  before the update (clipping is disabled with a huge ``--max_grad_norm``).
"""

from __future__ import annotations

import json
import random
import sys

import torch


def main() -> None:
    request = json.load(open(sys.argv[1]))
    reply_path = sys.argv[2]
    torch.set_num_threads(request.get("threads", torch.get_num_threads()))
    timing = request.get("mode") == "timing"
    steps = request.get("steps", 1)
    sys.argv = ["ReFL.py", "--output_dir", request["output_dir"], "--train_batch_size", "2",
                "--gradient_accumulation_steps", "1", "--max_train_steps", str(steps),
                "--max_grad_norm", "1e9", "--checkpointing_steps", "100000", "--report_to", "all",
                "--learning_rate", "1e-5", *request.get("extra_args", [])]
    import ImageReward as RM
    from ImageReward import ReFL

    load = RM.load
    if request.get("stand_in"):
        RM.load = lambda name, device: StandInReward()
    else:
        RM.load = lambda name, device: load(request["checkpoint"], device=device, med_config=request["med_config"])
    ReFL.Accelerator = accelerator_accepting_logging_dir(ReFL.Accelerator)
    args = ReFL.parse_args()
    trainer = ReFL.Trainer(request["pipeline"], request["prompts"], args)
    if timing:
        return time_steps(trainer, args, reply_path)
    seed = request["seed"]
    captured: dict = {}

    def seed_before_step(module, inputs):
        captured["input_ids"] = inputs[0].tolist()
        torch.manual_seed(seed)
        random.seed(seed)

    trainer.text_encoder.register_forward_pre_hook(seed_before_step)
    randint = random.randint

    def recorded_randint(a, b):
        captured["stop_index"] = value = randint(a, b)
        return value

    random.randint = recorded_randint
    score_gard = trainer.reward_model.score_gard

    def recorded_score(ids, mask, image):
        rewards = score_gard(ids, mask, image)
        captured["rewards"] = rewards.detach().flatten().tolist()
        return rewards

    trainer.reward_model.score_gard = recorded_score
    backward = trainer.accelerator.backward

    def recorded_backward(loss, **kwargs):
        captured["loss"] = loss.item()
        return backward(loss, **kwargs)

    trainer.accelerator.backward = recorded_backward
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    step = trainer.optimizer.step

    def recorded_step(*a, **k):
        grads = {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.grad is not None}
        torch.save(grads, request["gradient_out"])
        return step(*a, **k)

    trainer.optimizer.step = recorded_step
    trainer.train(args)
    import diffusers
    json.dump({**captured, "diffusers": diffusers.__version__, "torch": torch.__version__}, open(reply_path, "w"))


class StandInReward(torch.nn.Module):
    """``--stand-in-reward``: the mean of the preprocessed image instead of ImageReward, with the
    BERT tokenizer the trainer asks for; checks everything but the reward network, cheaply."""

    def __init__(self):
        from ImageReward.models.BLIP.blip import init_tokenizer

        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.blip = type("Blip", (), {"tokenizer": init_tokenizer()})()

    def score_gard(self, prompt_ids, prompt_attention_mask, image):
        return (image.mean(dim=(1, 2, 3)) * self.scale).unsqueeze(-1)


def accelerator_accepting_logging_dir(accelerator_class):
    """The trainer passes ``Accelerator(logging_dir=...)``, an argument accelerate has since
    removed (0.26.1, the version image-reward 1.5 installs with, refuses it); its successor is
    ``ProjectConfiguration.logging_dir``, where this moves it. Nothing else changes."""

    class Accelerator(accelerator_class):
        def __init__(self, *args, logging_dir=None, **kwargs):
            config = kwargs.get("project_config")
            if logging_dir is not None and config is not None:
                config.logging_dir = logging_dir
            super().__init__(*args, **kwargs)

    return Accelerator


def time_steps(trainer, args, reply_path: str) -> None:
    """Wall time between optimizer steps (each one ReFL step) and the peak GPU memory."""
    import time

    cuda = torch.cuda.is_available()
    stamps = []
    step = trainer.optimizer.step

    def timed_step(*a, **k):
        out = step(*a, **k)
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return out

    trainer.optimizer.step = timed_step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train(args)
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    json.dump({"seconds_per_step": seconds, "peak_memory_gib": peak, "torch": torch.__version__},
              open(reply_path, "w"))


if __name__ == "__main__":
    main()
