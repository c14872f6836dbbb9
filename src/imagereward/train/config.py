"""``TrainConfig``: the paper's training recipe as defaults, overridable from a file or flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..options import load_options, option, updated

INITS = ("blip", "imagereward", "scratch")
HEAD_INITS = ("lecun", "original")  # as imagereward.models.head (not imported: keeps --help light)
DROPOUTS = ("auto", "on", "off")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Every training setting. Defaults reproduce ImageReward's recipe (paper and released code)."""

    # -- data ---------------------------------------------------------------------------
    train_data: str = option(
        "", "training rankings: a JSON file in the test.json format, or a parquet file or "
        "folder in the ImageRewardDB layout (one row per image)")
    valid_data: str = option(
        "", "validation rankings in the same formats; empty: hold out --valid-fraction of the prompts")
    image_root: str = option(
        "", "folder that relative image paths start from (default: the data file's folder)")
    hub_dataset: str = option(
        "", "read the data from this hub data set instead (e.g. THUDM/ImageRewardDB; needs `datasets`)")
    hub_config: str = option("8k", "configuration of the hub data set (1k, 2k, 4k or 8k)")
    train_split: str = option("train", "hub split used for training")
    valid_split: str = option("validation", "hub split used for validation")
    valid_fraction: float = option(
        0.05, "fraction of the training prompts held out when no validation data is given")
    reference_data: str = option(
        "", "rankings whose images set the reward normalisation (default: the validation set)")
    num_workers: int = option(
        -1, "data loader worker processes per training process (-1: one per CPU this process may "
        "use, at most 4)")
    augment: bool = option(False, "random horizontal flips of training images")
    # -- model --------------------------------------------------------------------------
    init: str = option(
        "blip", "starting point: 'blip' (BLIP-large pretraining weights, fresh head), "
        "'imagereward' (an ImageReward checkpoint, to fine-tune) or 'scratch' (random)", INITS)
    init_checkpoint: str = option(
        "", "weights to start from: model_large.pth for 'blip'; a checkpoint file, saved "
        "folder or registered name (ImageReward-v1.0) for 'imagereward'")
    head_init: str = option(
        "lecun", "initialisation of a fresh reward head: 'lecun' (each layer N(0, 1/fan_in), "
        "variance-preserving) or 'original' (the original code's N(0, 1/(d+1)) for every layer, "
        "which starts the reward near 1e-6 and can stall training at loss ln 2)", HEAD_INITS)
    dropout: str = option(
        "auto", "dropout and drop-path while training: 'on' (the architecture's rates: the paper's "
        "recipe), 'off', or 'auto': off with --init scratch (from random weights dropout drowns what "
        "the prompt decides: training stays at chance on such tasks), on otherwise", DROPOUTS)
    model_config: str = option(
        "", "JSON with the model configuration (ImageRewardConfig fields, or a saved config.json); "
        "default: the ImageReward-v1.0 architecture")
    vocab_file: str = option(
        "", "BERT vocab.txt (default: $IMAGEREWARD_BERT_VOCAB or the one shipped with the package)")
    freeze_rate: float = option(
        0.7, "freeze the embeddings and the first floor(rate * layers) text layers and ViT blocks")
    freeze_backbone: bool = option(False, "freeze all of BLIP and train the head only")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    precision: str = option("fp32", "fp32, or bf16 autocast", PRECISIONS)
    # -- optimisation -------------------------------------------------------------------
    lr: float = option(1e-5, "Adam learning rate")
    adam_betas: Tuple[float, float] = option((0.9, 0.999), "Adam betas")
    adam_eps: float = option(1e-8, "Adam epsilon")
    weight_decay: float = option(0.0, "Adam (L2) weight decay")
    lr_schedule: str = option("cosine", "cosine (decay to zero over all steps) or constant", SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps before the schedule")
    pairs_per_step: int = option(64, "comparison pairs per optimizer step, over all processes")
    batch_size: int = option(
        4, "pairs per process per forward pass; accumulation = pairs_per_step / (batch_size * processes)")
    epochs: int = option(10, "passes over the training pairs")
    seed: int = option(1234, "random seed (each process adds its rank for dropout)")
    # -- validation and outputs ---------------------------------------------------------
    validations_per_epoch: int = option(4, "validation passes per epoch")
    validate_at_start: bool = option(True, "validate once before the first step")
    eval_batch_size: int = option(16, "pairs or images per process per evaluation batch")
    output_dir: str = option("imagereward-training", "where best/, last/, logs and checkpoints go")
    checkpoint_every: int = option(
        200, "write the resume checkpoint every N optimizer steps (0: only at the end)")
    resume: bool = option(False, "continue from output_dir/checkpoint.pt")
    stop_after_steps: int = option(
        0, "stop after this many optimizer steps, as if interrupted, keeping the schedule "
        "of the full run (0: run to the end); continue with --resume")
    log_every: int = option(10, "print progress every N optimizer steps (the log file gets all)")
    plot: bool = option(True, "write training_curves.png (needs matplotlib)")
    device: str = option("", "cuda, cpu, ... (default: the local GPU when there is one)")
    threads: int = option(
        0, "torch threads of each process on the CPU (0: OMP_NUM_THREADS when set, else an even "
        "share, among torchrun's processes on this machine, of the CPUs it may use: its affinity "
        "mask, capped by a cgroup CPU quota)")

    # ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from plain values (a parsed file); unknown keys are an error naming ``source``."""
        return cls().updated(data, source)

    def updated(self, data: Mapping[str, Any], source: str = "overrides") -> "TrainConfig":
        """A copy with ``data`` applied; keys may use dashes or underscores."""
        return updated(self, data, "training", source)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def loader_workers(self) -> int:
        """``num_workers``, with -1 resolved to the CPUs this process may use (at most 4)."""
        if self.num_workers >= 0:
            return self.num_workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(4, cpus)

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first invalid option; return ``self``."""
        checks = [
            ("init", self.init in INITS, f"must be one of {INITS}"),
            ("head_init", self.head_init in HEAD_INITS, f"must be one of {HEAD_INITS}"),
            ("dropout", self.dropout in DROPOUTS, f"must be one of {DROPOUTS}"),
            ("precision", self.precision in PRECISIONS, f"must be one of {PRECISIONS}"),
            ("lr_schedule", self.lr_schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
            ("freeze_rate", 0.0 <= self.freeze_rate <= 1.0, "must be in [0, 1]"),
            ("valid_fraction", 0.0 < self.valid_fraction < 1.0, "must be in (0, 1)"),
            ("lr", self.lr > 0, "must be positive"),
            ("adam_betas", len(self.adam_betas) == 2, "needs two values"),
            ("pairs_per_step", self.pairs_per_step > 0, "must be positive"),
            ("batch_size", self.batch_size > 0, "must be positive"),
            ("eval_batch_size", self.eval_batch_size > 0, "must be positive"),
            ("epochs", self.epochs > 0, "must be positive"),
            ("validations_per_epoch", self.validations_per_epoch >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("threads", self.threads >= 0, "must be >= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            ("stop_after_steps", self.stop_after_steps >= 0, "must be >= 0"),
            ("num_workers", self.num_workers >= -1, "must be >= 0, or -1 for the CPUs this process may use"),
            ("log_every", self.log_every > 0, "must be positive"),
            ("train_data", bool(self.train_data or self.hub_dataset),
             "is required (or give --hub-dataset)"),
            ("init_checkpoint", self.init == "scratch" or bool(self.init_checkpoint),
             f"is required for init {self.init!r}" + (
                 " (BLIP-large pretraining weights: https://storage.googleapis.com/"
                 "sfr-vision-language-research/BLIP/models/model_large.pth)"
                 if self.init == "blip" else "")),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ValueError(f"training option {name} = {getattr(self, name)!r} {problem}")
        return self

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step in each process."""
        per_pass = self.batch_size * world_size
        if self.pairs_per_step % per_pass:
            raise ValueError(
                f"pairs_per_step {self.pairs_per_step} is not a multiple of batch_size "
                f"{self.batch_size} x {world_size} process(es)"
            )
        return self.pairs_per_step // per_pass


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Defaults, then the file at ``path``, then ``overrides``; validated."""
    return load_options(TrainConfig, path, overrides)
