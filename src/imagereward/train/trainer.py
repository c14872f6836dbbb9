"""The training loop: pairwise loss, gradient accumulation, data parallelism, validation,
checkpoints for resuming, and the final normalised model."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import PreprocessConfig
from ..saving import WEIGHTS_FILE, save_pretrained
from ..preprocess import ImagePreprocessor
from ..tokenizers.bert import BertTokenizer
from .config import TrainConfig
from .data import Batch, EpochSampler, ImageDataset, PairDataset, ShardSampler, collate, random_hflip
from ..cpu_share import use_allocated_threads
from ..distributed import DistContext, all_gather_objects, all_reduce_sum, barrier, init_distributed, shutdown
from .evaluate import autocast, evaluate_pairs, pair_rewards, pairwise_loss, reward_statistics
from ..options import require
from .freeze import apply_freeze
from .initialize import build_model
from .logs import LOG_FILE, TrainLog, read_log
from .plot import plot_training_curves
from .sources import load_splits
from .state import (
    CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state,
)

logger = logging.getLogger(__name__)

BEST_DIR = "best"
LAST_DIR = "last"
PLOT_FILE = "training_curves.png"
# A reward whose spread over the validation images stays below this for this many validations
# in a row is not learning: the pairwise loss sits at ln 2.
FLAT_REWARD_STD = 1e-3
FLAT_VALIDATIONS = 3
CONFIG_FILE = "train_config.json"
# Options that decide what each step sees and its learning rate: a resumed run keeps them.
RESUME_FIXED = (
    "train_data", "valid_data", "hub_dataset", "hub_config", "train_split", "valid_fraction",
    "seed", "pairs_per_step", "epochs", "lr", "lr_schedule", "warmup_steps", "freeze_rate",
    "freeze_backbone",
)

Record = Dict[str, Any]


@dataclass
class TrainResult:
    """Where the outputs are and how the run went (``finished`` is False after a stop)."""

    output_dir: str
    steps: int
    finished: bool
    best_step: int
    best_val_loss: float
    reward_mean: Optional[float] = None
    reward_std: Optional[float] = None


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(config: TrainConfig, on_record: Optional[Callable[[Record], None]] = None) -> TrainResult:
    """Train a reward model as ``config`` says; run the same call in every torchrun process.

    ``on_record`` receives every log record on rank 0 (after it is written).
    """
    config.validate()
    context = init_distributed(config.device)
    if context.device.type == "cpu":  # processes of one machine share its CPUs
        use_allocated_threads(config.threads or None, processes=context.local_world_size)
    completed = False
    try:
        result = Trainer(config, context, on_record).run()  # the trainer and its DDP wrapper go here
        completed = True
        return result
    finally:
        shutdown(context, wait_for_others=completed)  # after a failure, leave without waiting


class Trainer:
    """One process's part of a training run; :func:`train` is the way to use it."""

    def __init__(
        self, config: TrainConfig, context: DistContext, on_record: Optional[Callable[[Record], None]]
    ) -> None:
        self.config, self.context, self.on_record = config, context, on_record
        self.output_dir = config.output_dir
        self.checkpoint_path = os.path.join(self.output_dir, CHECKPOINT_FILE)
        if config.plot:
            require("matplotlib", "plotting the training curves (or pass --no-plot)")
        if not config.resume and os.path.isfile(self.checkpoint_path):
            raise FileExistsError(
                f"{self.checkpoint_path} exists: pass --resume to continue that run, "
                "or choose another --output-dir"
            )
        self.model = build_model(config)
        freeze = apply_freeze(self.model, config.freeze_rate, config.freeze_backbone)
        self.model.set_gradient_checkpointing(config.gradient_checkpointing)
        self.model.to(context.device)
        self._prepare_data()
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
            betas=tuple(config.adam_betas), eps=config.adam_eps, weight_decay=config.weight_decay,
        )
        # A partial, not a lambda over self: no reference cycle keeps the trainer (and the
        # process group its DDP wrapper holds) alive after train() returns.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(lr_factor, warmup=config.warmup_steps, total=self.total_steps,
                              schedule=config.lr_schedule),
        )
        self.step, self.best_step, self.best_val_loss = 0, -1, math.inf
        self.flat_validations = 0
        own_rng = self._resume() if config.resume else None
        self.net: nn.Module = self.model
        if context.enabled:
            devices = [context.device.index] if context.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=devices)
        seed_everything(config.seed + context.rank)  # dropout differs between processes
        if own_rng is not None:
            set_rng_state(own_rng, context.device)

        self.log: Optional[TrainLog] = None
        if context.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
                json.dump(config.to_dict(), handle, indent=2)
            self.log = TrainLog(os.path.join(self.output_dir, LOG_FILE), self.step if config.resume else None)
            logger.info(
                "%d training pairs, %d validation pairs; %d steps of %d pairs (%d process(es) x %d pairs "
                "x %d accumulation); %s", len(self.train_set), len(self.valid_set), self.total_steps,
                config.pairs_per_step, context.world_size, config.batch_size, self.accumulation,
                freeze.describe(),
            )
        self.started = time.monotonic()

    def _warn_truncated(self, tokenizer: BertTokenizer, prompts: List[str], limit: int) -> None:
        """Say when training prompts are cut at ``max_text_length`` tokens: a preference that
        the cut words decide cannot be learned (the loss stays at ln 2)."""
        cut = tokenizer.truncated(prompts)
        if cut and self.context.is_main:
            logger.warning(
                "%d of %d training prompts are longer than max_text_length (%d tokens with [CLS] and "
                "[SEP]) and are cut: words past the limit cannot affect the reward, e.g. %r; raise "
                "max_text_length in the model config if they matter", len(cut), len(prompts), limit, cut[0])

    def _prepare_data(self) -> None:
        """Datasets, the step arithmetic and the training sampler."""
        config, model_config = self.config, self.model.config
        tokenizer = BertTokenizer(config.vocab_file or None, max_length=model_config.max_text_length)
        preprocess = ImagePreprocessor(PreprocessConfig(image_size=model_config.vision.image_size))
        train_groups, valid_groups, reference_groups = load_splits(config)
        self._warn_truncated(tokenizer, [g.prompt for g in train_groups], model_config.max_text_length)
        self.train_set = PairDataset(train_groups, tokenizer, preprocess)
        self.valid_set = PairDataset(valid_groups, tokenizer, preprocess)
        self.reference_set = ImageDataset(reference_groups, tokenizer, preprocess)
        if len(self.valid_set) == 0:
            raise ValueError("the validation set has no pairs of images with different ranks")
        self.accumulation = config.accumulation(self.context.world_size)
        self.steps_per_epoch = len(self.train_set) // config.pairs_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_set)} training pairs are fewer than pairs_per_step {config.pairs_per_step}"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        count = config.validations_per_epoch
        self.validation_points = {math.ceil(k * self.steps_per_epoch / count) for k in range(1, count + 1)}
        self.sampler = EpochSampler(self.train_set, self.context.world_size, self.context.rank, config.seed)

    # -- data ------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
            num_workers=self.config.loader_workers(), pin_memory=self.context.device.type == "cuda",
            # Worker seeds come from this generator, so loaders never draw from the global RNG.
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _shard(self, dataset: Dataset) -> DataLoader:
        sampler = ShardSampler(len(dataset), self.context.world_size, self.context.rank)
        return self._loader(dataset, self.config.eval_batch_size, sampler)

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        if self.step == 0 and config.validate_at_start:
            self._validate()
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            done = self.step - epoch * self.steps_per_epoch
            self.sampler.set_position(epoch, done * self.accumulation * config.batch_size)
            batches = iter(self._loader(self.train_set, config.batch_size, self.sampler))
            for position in range(done + 1, self.steps_per_epoch + 1):
                self._train_step(batches)
                if position in self.validation_points:
                    self._validate()
                if self.step == self.total_steps:
                    break
                stop = self.step == config.stop_after_steps
                if stop or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                    self._save_checkpoint()
                if stop:
                    if self.context.is_main:
                        logger.info("stopped after step %d; continue with --resume", self.step)
                    return self._result(finished=False)
        self._save_checkpoint()
        return self._finish()

    def _train_step(self, batches: Iterator[Batch]) -> None:
        config, device = self.config, self.context.device
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        scale = 1.0 / (config.batch_size * self.accumulation)  # DDP averages over processes
        for micro in range(self.accumulation):
            batch = next(batches)
            if config.augment:
                batch["better"], batch["worse"] = random_hflip(batch["better"]), random_hflip(batch["worse"])
            last = micro == self.accumulation - 1
            sync = self.net.no_sync() if self.context.enabled and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, config.precision):
                    better, worse = pair_rewards(self.net, batch, device)
                losses = pairwise_loss(better, worse)
                (losses.sum() * scale).backward()
            totals[0] += losses.detach().sum().double()
            totals[1] += (better > worse).sum()
            totals[2] += losses.numel()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        loss, correct, count = all_reduce_sum(totals, self.context).tolist()
        record = self._record({"type": "train", "loss": loss / count, "accuracy": correct / count, "lr": lr,
                               "seconds": round(time.monotonic() - self.started, 3)})
        if self.context.is_main and (self.step % config.log_every == 0 or self.step == 1):
            logger.info("step %d/%d epoch %.2f loss %.4f accuracy %.3f lr %.3g", self.step,
                        self.total_steps, record["epoch"], record["loss"], record["accuracy"], lr)

    def _validate(self) -> None:
        self.model.eval()
        batches = self._shard(self.valid_set)
        loss, accuracy, spread = evaluate_pairs(self.model, batches, self.context, self.config.precision)
        self.model.train()
        improved = loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = loss, self.step
            self._save_model(BEST_DIR, 0.0, 1.0)  # normalised at the end
        self._record({"type": "valid", "loss": loss, "accuracy": accuracy, "reward_std": spread,
                      "best": improved})
        if self.context.is_main:
            logger.info("validation at step %d: loss %.4f accuracy %.3f reward std %.3g%s", self.step, loss,
                        accuracy, spread, " (best)" if improved else "")
        self._check_reward_spread(spread)

    def _check_reward_spread(self, spread: float) -> None:
        """Warn once when the reward has stayed (nearly) constant over several validations."""
        self.flat_validations = self.flat_validations + 1 if spread < FLAT_REWARD_STD else 0
        if self.flat_validations == FLAT_VALIDATIONS and self.context.is_main:
            likely = (
                "the reward head was initialised with --head-init original, which starts the reward "
                "near zero so that its gradients vanish under Adam's epsilon; train with --head-init lecun"
                if self.config.head_init == "original" and self.config.init != "imagereward"
                else "the learning rate may be too small, or the backbone frozen with too little to learn"
            )
            message = (f"the reward has hardly varied for {FLAT_VALIDATIONS} validations (std {spread:.3g} "
                       f"< {FLAT_REWARD_STD:g}; loss stays near ln 2 = 0.6931): likely cause: {likely}")
            logger.warning(message)
            self._record({"type": "warning", "message": message})

    def _record(self, record: Record) -> Record:
        record = {"type": record.pop("type"), "step": self.step,
                  "epoch": round(self.step / self.steps_per_epoch, 6), **record}
        if self.log is not None:
            self.log.write(record)
            if self.on_record is not None:
                self.on_record(record)
        return record

    # -- saving and resuming ---------------------------------------------------------------
    def _save_model(self, name: str, mean: float, std: float) -> None:
        """``save_pretrained`` folder (rank 0) with the given normalisation."""
        if self.context.is_main:
            self.model.config = dataclasses.replace(self.model.config, reward_mean=mean, reward_std=std)
            save_pretrained(self.model, os.path.join(self.output_dir, name))

    def _save_checkpoint(self) -> None:
        rngs = all_gather_objects(rng_state(self.context.device), self.context)
        if self.context.is_main:
            save_checkpoint(self.checkpoint_path, {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "best_step": self.best_step,
                "best_val_loss": self.best_val_loss,
                "world_size": self.context.world_size,
                "rng": rngs,
                "config": self.config.to_dict(),
            })

    def _resume(self) -> Optional[Dict[str, Any]]:
        """Load the checkpoint into model, optimizer and scheduler; this process's RNG state."""
        state = load_checkpoint(self.checkpoint_path)
        saved = state["config"]
        changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(self.config, k)]
        if changed:
            raise ValueError(
                f"{self.checkpoint_path} was written with other values of {', '.join(changed)}; "
                "resume with the options of the interrupted run"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best_step = state["step"], state["best_step"]
        self.best_val_loss = state["best_val_loss"]
        if self.context.is_main:
            logger.info("resuming from step %d of %s", self.step, self.checkpoint_path)
        if len(state["rng"]) != self.context.world_size:
            logger.warning("the checkpoint was written by %d process(es), not %d: random streams restart",
                           len(state["rng"]), self.context.world_size)
            return None
        return state["rng"][self.context.rank]

    # -- the end ---------------------------------------------------------------------------
    def _normalise(self, name: str) -> Tuple[float, float]:
        """Measure the reward mean and std on the reference set and save ``name`` with them."""
        self.model.eval()
        mean, std, count = reward_statistics(self.model, self._shard(self.reference_set), self.context,
                                             self.config.precision)
        if std < 1e-8:
            logger.warning("rewards on the reference set do not vary (std %.3g); scores stay raw", std)
            mean, std = 0.0, 1.0
        self._save_model(name, mean, std)
        self._record({"type": "normalization", "model": name, "reward_mean": mean, "reward_std": std,
                      "images": count})
        return mean, std

    def _finish(self) -> TrainResult:
        self._normalise(LAST_DIR)
        if self.best_step >= 0:
            barrier(self.context)  # rank 0 has written best/
            from safetensors.torch import load_file

            best = os.path.join(self.output_dir, BEST_DIR, WEIGHTS_FILE)
            self.model.load_state_dict(load_file(best, device=str(self.context.device)))
        mean, std = self._normalise(BEST_DIR)
        if self.context.is_main and self.config.plot:
            plot_training_curves(read_log(os.path.join(self.output_dir, LOG_FILE)),
                                 os.path.join(self.output_dir, PLOT_FILE))
        if self.context.is_main:
            logger.info("done: best validation loss %.4f at step %d; model in %s", self.best_val_loss,
                        self.best_step, os.path.join(self.output_dir, BEST_DIR))
        return self._result(finished=True, mean=mean, std=std)

    def _result(
        self, finished: bool, mean: Optional[float] = None, std: Optional[float] = None
    ) -> TrainResult:
        return TrainResult(
            self.output_dir, self.step, finished, self.best_step, self.best_val_loss, mean, std
        )
