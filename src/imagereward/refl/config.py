"""``ReFLConfig``: every ReFL setting, with the original script's values as defaults where it has them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Any, Dict, Mapping, Optional, Tuple

from ..options import load_options, option, updated

PRECISIONS = ("no", "fp16", "bf16")
PRETRAIN_MODES = ("alternate", "joint")
SAMPLERS = ("ddpm", "ddim")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class ReFLConfig:
    """Reward Feedback Learning of a diffusers text-to-image pipeline."""

    # -- data -----------------------------------------------------------------------------
    prompts: str = option(
        "", "training prompts: a JSON list (strings or objects with a 'text' or 'prompt' key, "
        "as the original refl_data.json), a JSONL file of such objects, or a text file, one per line")
    pretrain_loss: bool = option(
        True, "regularise with the pretraining (denoising) loss on --pretrain-data, as the paper; "
        "--no-pretrain-loss trains on the reward alone, as the original script")
    pretrain_data: str = option(
        "", "(image, caption) pairs: a folder of images with same-named .txt captions (or a "
        "metadata.jsonl), a JSONL file, a parquet file, or a hub data set name")
    pretrain_image_column: str = option("image", "image column/key of the pretraining data")
    pretrain_caption_column: str = option("text", "caption column/key of the pretraining data")
    pretrain_split: str = option("train", "split of a hub pretraining data set")
    pretrain_weight: float = option(
        1.0, "weight of the pretraining loss: in 'alternate' mode it multiplies the learning rate "
        "of the pretraining updates (their AdamW is their own); in 'joint' mode the loss")
    pretrain_mode: str = option(
        "alternate", "'alternate': a pretraining-loss update, then a reward-loss update, each step "
        "(the paper's algorithm); 'joint': one update on reward loss + weight * pretraining loss",
        PRETRAIN_MODES)
    pretrain_every: int = option(1, "use the pretraining loss on every N-th optimizer step")
    pretrain_batch_size: int = option(0, "pairs per process per micro-step (0: --train-batch-size)")
    # -- models -----------------------------------------------------------------------------
    model: str = option(
        "CompVis/stable-diffusion-v1-4", "diffusers pipeline folder or hub id (SD 1.x/2.x or SDXL)")
    revision: str = option("", "hub revision of --model")
    reward: str = option(
        "ImageReward-v1.0", "reward model(s): comma-separated SPEC[=WEIGHT]; SPEC is an ImageReward "
        "name, checkpoint or saved folder, or CLIP / BLIP / Aesthetic, optionally NAME:CHECKPOINT; "
        "several are summed with their weights")
    lora: bool = option(False, "train LoRA adapters of the UNet attention (needs peft) instead of all weights")
    lora_rank: int = option(4, "LoRA rank")
    lora_alpha: float = option(0.0, "LoRA alpha (0: equal to the rank)")
    lora_targets: str = option("to_k,to_q,to_v,to_out.0", "UNet modules that get LoRA adapters")
    # -- the ReFL step --------------------------------------------------------------------
    resolution: int = option(0, "image side in pixels (0: the pipeline's own, e.g. 512 for SD 1.x)")
    num_inference_steps: int = option(40, "sampler steps of each generated image")
    stop_steps: int = option(10, "the gradient step is drawn uniformly from the last N sampler steps")
    sampler: str = option("ddpm", "sampler of the generated images (the original: ddpm)", SAMPLERS)
    guidance_scale: float = option(1.0, "classifier-free guidance of the generated images (1: none, as the original)")
    margin: float = option(2.0, "reward loss mean(relu(margin - reward)) * grad_scale: the margin")
    grad_scale: float = option(1e-3, "reward loss scale")
    # -- optimisation ---------------------------------------------------------------------
    lr: float = option(1e-5, "AdamW learning rate")
    adam_betas: Tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    use_8bit_adam: bool = option(False, "8-bit AdamW from bitsandbytes (GPU only)")
    max_grad_norm: float = option(1.0, "clip the gradient norm (0: no clipping)")
    lr_schedule: str = option("constant", "learning-rate schedule after warm-up", SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up optimizer steps")
    train_batch_size: int = option(2, "prompts per process per micro-step")
    gradient_accumulation_steps: int = option(4, "micro-steps per optimizer step")
    max_steps: int = option(100, "optimizer steps")
    mixed_precision: str = option(
        "no", "'fp16' or 'bf16' autocast, frozen models in that precision", PRECISIONS)
    gradient_checkpointing: bool = option(False, "recompute UNet activations in backward")
    ema: bool = option(False, "keep an exponential moving average of the trained weights; it is saved")
    ema_decay: float = option(0.9999, "EMA decay")
    seed: int = option(0, "seed of latents, stop steps, data order and noise")
    # -- validation and outputs -----------------------------------------------------------
    output_dir: str = option("refl-output", "where the pipeline (or LoRA weights), logs and checkpoints go")
    checkpoint_every: int = option(100, "write the resume checkpoint every N optimizer steps (0: only at the end)")
    resume: bool = option(False, "continue from output_dir/checkpoint.pt")
    stop_after_steps: int = option(
        0, "stop after this many optimizer steps, as if interrupted (continue with --resume)")
    validation_prompts: str = option("", "prompts file generated and scored every --validation-every steps")
    validation_every: int = option(50, "validation interval in optimizer steps (0: never)")
    validation_seed: int = option(1234, "seed of the validation images (the same every time)")
    log_every: int = option(10, "print progress every N optimizer steps (the log file gets all)")

    # ------------------------------------------------------------------------------------
    def updated(self, data: Mapping[str, Any], source: str = "overrides") -> "ReFLConfig":
        """A copy with ``data`` applied; keys may use dashes or underscores."""
        return updated(self, data, "ReFL", source)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretraining(self) -> bool:
        return self.pretrain_loss and self.pretrain_weight > 0

    def validate(self) -> "ReFLConfig":
        """Raise ``ValueError`` naming the first invalid option; return ``self``."""
        checks = [
            ("prompts", bool(self.prompts), "is required: a JSON, JSONL or text file of prompts"),
            ("pretrain_data", not self.pretraining or bool(self.pretrain_data),
             "is required while the pretraining loss is on (or pass --no-pretrain-loss)"),
            ("pretrain_mode", self.pretrain_mode in PRETRAIN_MODES, f"must be one of {PRETRAIN_MODES}"),
            ("pretrain_every", self.pretrain_every > 0, "must be positive"),
            ("pretrain_batch_size", self.pretrain_batch_size >= 0, "must be >= 0"),
            ("pretrain_weight", self.pretrain_weight >= 0, "must be >= 0"),
            ("mixed_precision", self.mixed_precision in PRECISIONS, f"must be one of {PRECISIONS}"),
            ("sampler", self.sampler in SAMPLERS, f"must be one of {SAMPLERS}"),
            ("lr_schedule", self.lr_schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
            ("num_inference_steps", self.num_inference_steps > 0, "must be positive"),
            ("stop_steps", 0 < self.stop_steps <= self.num_inference_steps,
             f"must be in 1..num_inference_steps ({self.num_inference_steps})"),
            ("guidance_scale", self.guidance_scale >= 1.0, "must be >= 1 (1: no guidance)"),
            ("lr", self.lr > 0, "must be positive"),
            ("train_batch_size", self.train_batch_size > 0, "must be positive"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps > 0, "must be positive"),
            ("max_steps", self.max_steps > 0, "must be positive"),
            ("resolution", self.resolution >= 0 and self.resolution % 8 == 0, "must be 0 or a multiple of 8"),
            ("lora_rank", self.lora_rank > 0, "must be positive"),
            ("ema_decay", 0.0 < self.ema_decay < 1.0, "must be in (0, 1)"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            ("stop_after_steps", self.stop_after_steps >= 0, "must be >= 0"),
            ("validation_every", self.validation_every >= 0, "must be >= 0"),
            ("log_every", self.log_every > 0, "must be positive"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0"),
            ("reward", bool(self.reward.strip()), "is required"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ValueError(f"ReFL option {name} = {getattr(self, name)!r} {problem}")
        unknown = unknown_rewards(self.reward)
        if unknown:
            raise ValueError(f"ReFL option reward = {self.reward!r} names {', '.join(unknown)}: neither a "
                             "registered model (imagereward models) nor a checkpoint file or folder")
        return self


def unknown_rewards(text: str) -> List[str]:
    """The reward models of ``--reward`` that are neither registered nor local files, found
    before any pipeline or model loads."""
    import os

    from ..registry import find_entry
    from .reward import parse_reward_specs

    return [spec.name for spec in parse_reward_specs(text)
            if find_entry(spec.name) is None and not os.path.exists(os.path.expanduser(spec.name))]


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> ReFLConfig:
    """Defaults, then the JSON/TOML file at ``path``, then ``overrides``; validated."""
    return load_options(ReFLConfig, path, overrides)
