"""The ReFL training loop on accelerate: reward and pretraining updates, gradient accumulation,
data parallelism, mixed precision, EMA, validation, resumable checkpoints and the output pipeline.

Every random draw of a step (prompts, pairs, latents, stop index, sampler and
pretraining noise) comes from generators seeded by the seed and the micro-batch's number
over all processes, so a resumed run repeats exactly what an uninterrupted one would have
done, and ``N`` processes compute what one process with ``N`` times the accumulation does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import __version__
from ..train.logs import TrainLog, read_log
from ..train.state import load_checkpoint, save_checkpoint
from .algorithm import (
    denoising_loss, draw_stop_index, encode_images, initial_latents, make_noise_scheduler, make_sampler,
    reward_step, stream_seed,
)
from .config import ReFLConfig
from .data import IndexStream, batch_of_pairs, read_pairs, read_prompts
from .evaluate import generate_images, mean_reward
from ..errors import OptionsError
from .pipeline import TextConditioner, default_resolution, load_pipeline, require_refl, vae_scale_factor
from .report import plot_progress, save_grid
from .reward import Reward

logger = logging.getLogger("imagereward.refl")

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "refl_log.jsonl"
SETTINGS_FILE = "refl_config.json"
PLOT_FILE = "refl_progress.png"
VALIDATION_DIR = "validation"
# Options a resumed run may change: they do not alter what any step computes.
RESUME_FREE = ("output_dir", "resume", "stop_after_steps", "checkpoint_every", "validation_prompts",
               "validation_every", "validation_seed", "log_every", "gradient_checkpointing")
PURPOSE_STOP, PURPOSE_SAMPLE, PURPOSE_PRETRAIN = 0, 1, 2

Record = Dict[str, Any]


@dataclass
class ReFLResult:
    output_dir: str
    steps: int
    finished: bool


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def train_refl(config: ReFLConfig, on_record: Optional[Callable[[Record], None]] = None) -> ReFLResult:
    """Fine-tune ``config.model`` with ReFL; run the same call in every process of
    ``accelerate launch`` or ``torchrun``. ``on_record`` gets each log record on the main process."""
    return ReFLTrainer(config.validate(), on_record).run()


class ReFLTrainer:
    """One process's part of a ReFL run; :func:`train_refl` is the way to use it."""

    def __init__(self, config: ReFLConfig, on_record: Optional[Callable[[Record], None]] = None) -> None:
        accelerate = require_refl("accelerate", "ReFL")
        self.config, self.on_record = config, on_record
        # cpu=True where there is no GPU: accelerate then joins torchrun's CPU process group (gloo)
        self.accelerator = accelerate.Accelerator(mixed_precision=config.mixed_precision,
                                                  cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.checkpoint_path = os.path.join(config.output_dir, CHECKPOINT_FILE)
        if not config.resume and os.path.isfile(self.checkpoint_path):
            raise OptionsError(f"{self.checkpoint_path} exists: pass --resume to continue that run, "
                               "or choose another --output-dir")
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision,
                                                                                torch.float32)
        self.prompts = read_prompts(config.prompts)
        self.pairs = None
        if config.pretraining:
            self.pairs = read_pairs(config.pretrain_data, config.pretrain_image_column,
                                    config.pretrain_caption_column, config.pretrain_split)
        self.validation_prompts = read_prompts(config.validation_prompts) if config.validation_prompts else []
        self._build_models()
        self.prompt_stream = IndexStream(len(self.prompts), config.seed)
        self.pair_stream = IndexStream(len(self.pairs), config.seed + 1) if self.pairs else None

    # -- set-up ----------------------------------------------------------------------------
    def _build_models(self) -> None:
        config, dtype = self.config, self.weight_dtype
        self.pipe = load_pipeline(config.model, config.revision)
        self.resolution = config.resolution or default_resolution(self.pipe)
        self.scale = vae_scale_factor(self.pipe.vae)
        for name in ("vae", "text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
                upcast = name == "vae" and dtype == torch.float16 and getattr(module.config, "force_upcast", False)
                _place(module, self.device, torch.float32 if upcast else dtype)
        unet = self.pipe.unet
        if config.lora:
            peft = require_refl("peft", "LoRA training")
            _place(unet.requires_grad_(False), self.device, dtype)
            torch.manual_seed(config.seed)  # the adapters' initial weights: the run's own seed
            unet.add_adapter(peft.LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank, init_lora_weights="gaussian",
                target_modules=[t.strip() for t in config.lora_targets.split(",") if t.strip()]))
            for param in unet.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        else:
            _place(unet.requires_grad_(True), self.device, torch.float32)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
        params = [p for _, p in self.trainable]
        schedule = lambda s: lr_factor(s, config.warmup_steps, config.max_steps, config.lr_schedule)  # noqa: E731
        self.optimizer = self._optimizer(params, config.lr)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        # 'alternate': the pretraining updates get their own AdamW moments, so that neither loss's
        # gradient scale (the reward loss is scaled by grad_scale) mutes the other's steps.
        self.pretrain_optimizer = self.pretrain_scheduler = None
        if config.pretraining and config.pretrain_mode == "alternate":
            self.pretrain_optimizer = self._optimizer(params, config.lr * config.pretrain_weight)
            self.pretrain_scheduler = torch.optim.lr_scheduler.LambdaLR(self.pretrain_optimizer, schedule)
        self.ema = None
        if config.ema:
            training_utils = require_refl("diffusers.training_utils", "EMA")
            self.ema = training_utils.EMAModel(params, decay=config.ema_decay)
        self.unet, self.optimizer = self.accelerator.prepare(unet, self.optimizer)
        if self.pretrain_optimizer is not None:
            self.pretrain_optimizer = self.accelerator.prepare(self.pretrain_optimizer)
        self.conditioner = TextConditioner(self.pipe, self.resolution)
        self.sampler = make_sampler(config.sampler, self.pipe.scheduler.config)
        self.noise_scheduler = make_noise_scheduler(self.pipe.scheduler.config)
        self.reward = Reward.load(config.reward, self.device, dtype)

    def _optimizer(self, params: List[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        config = self.config
        cls: Any = torch.optim.AdamW
        if config.use_8bit_adam:
            cls = require_refl("bitsandbytes", "8-bit Adam").optim.AdamW8bit
        return cls(params, lr=lr, betas=tuple(config.adam_betas), eps=config.adam_eps,
                   weight_decay=config.weight_decay)

    # -- one micro-step of each loss -----------------------------------------------------
    def _batch_number(self, step: int, micro: int) -> int:
        """Micro-batches counted over all processes: rank ``r`` of ``N`` takes every ``N``-th."""
        return (step * self.config.gradient_accumulation_steps + micro) * self.world + self.rank

    def _generator(self, step: int, micro: int, purpose: int) -> torch.Generator:
        seed = stream_seed(self.config.seed, self._batch_number(step, micro), purpose)
        return torch.Generator().manual_seed(seed)

    def reward_micro(self, step: int, micro: int) -> Dict[str, Any]:
        config = self.config
        batch = config.train_batch_size
        prompts = [self.prompts[i] for i in self.prompt_stream.batch(self._batch_number(step, micro), batch)]
        stop = draw_stop_index(config.num_inference_steps, config.stop_steps,
                               self._generator(step, micro, PURPOSE_STOP))
        generator = self._generator(step, micro, PURPOSE_SAMPLE)
        latents = initial_latents(batch, self.accelerator.unwrap_model(self.unet).config.in_channels,
                                  self.resolution, self.scale, generator, self.device)
        cond = self.conditioner(prompts)
        uncond = self.conditioner([""] * batch) if config.guidance_scale != 1.0 else None
        with self.accelerator.autocast():
            loss, rewards = reward_step(
                self.unet, self.pipe.vae, self.sampler, self.reward, prompts, cond, uncond, latents, stop,
                num_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                margin=config.margin, grad_scale=config.grad_scale, generator=generator)
        return {"loss": loss, "rewards": rewards.detach(), "stop": stop}

    def pretrain_micro(self, step: int, micro: int) -> torch.Tensor:
        assert self.pairs is not None and self.pair_stream is not None
        size = self.config.pretrain_batch_size or self.config.train_batch_size
        indices = self.pair_stream.batch(self._batch_number(step, micro), size)
        pixels, captions = batch_of_pairs(self.pairs, indices, self.resolution)
        generator = self._generator(step, micro, PURPOSE_PRETRAIN)
        latents = encode_images(self.pipe.vae, pixels.to(self.device), generator).float()
        with self.accelerator.autocast():
            return denoising_loss(self.unet, self.noise_scheduler, latents, self.conditioner(captions), generator)

    # -- one optimizer update ------------------------------------------------------------
    def _update(self, micro_loss: Callable[[int], torch.Tensor], optimizer: Any) -> None:
        accumulation = self.config.gradient_accumulation_steps
        for micro in range(accumulation):
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.unet):
                self.accelerator.backward(micro_loss(micro) / accumulation)
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_([p for _, p in self.trainable], self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_step(self, step: int) -> Record:
        config = self.config
        pretrain = config.pretraining and step % config.pretrain_every == 0
        weight = config.pretrain_weight
        reward_losses: List[torch.Tensor] = []
        pretrain_losses: List[torch.Tensor] = []
        rewards: List[torch.Tensor] = []
        stops: List[int] = []

        def reward_part(micro: int) -> torch.Tensor:
            out = self.reward_micro(step, micro)
            reward_losses.append(out["loss"].detach().float())
            rewards.append(out["rewards"].float())
            stops.append(out["stop"])
            return out["loss"]

        def pretrain_part(micro: int) -> torch.Tensor:
            loss = self.pretrain_micro(step, micro)
            pretrain_losses.append(loss.detach().float())
            return loss

        if self.pretrain_optimizer is not None:
            if pretrain:
                self._update(pretrain_part, self.pretrain_optimizer)
            self.pretrain_scheduler.step()
            self._update(reward_part, self.optimizer)
        elif pretrain:
            self._update(lambda micro: reward_part(micro) + weight * pretrain_part(micro), self.optimizer)
        else:
            self._update(reward_part, self.optimizer)
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step([p for _, p in self.trainable])
        gather = self.accelerator.gather
        record: Record = {
            "type": "train", "step": step + 1,
            "reward_loss": float(gather(torch.stack(reward_losses)).mean()),
            "reward_mean": float(gather(torch.cat(rewards)).mean()),
            "pretrain_loss": float(gather(torch.stack(pretrain_losses)).mean()) if pretrain_losses else None,
            "stop_indices": stops, "lr": self.lr_scheduler.get_last_lr()[0],
        }
        return record

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self, step: int) -> Dict[str, Any]:
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "step": step,
            "config": self.config.to_dict(),
            "trainable": {name: p.detach().cpu().clone() for name, p in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "pretrain_optimizer": _state_or_none(self.pretrain_optimizer),
            "pretrain_scheduler": _state_or_none(self.pretrain_scheduler),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def _restore(self) -> int:
        state = load_checkpoint(self.checkpoint_path)
        saved = {**self.config.to_dict(), **state["config"]}
        changed = [k for k, v in self.config.to_dict().items()
                   if k not in RESUME_FREE and not _same_option(saved[k], v)]
        if changed:
            raise OptionsError(f"{self.checkpoint_path} was written with other values of {', '.join(changed)}; "
                               "resume with the same options or start a new --output-dir")
        weights = state["trainable"]
        names = [name for name, _ in self.trainable]
        if sorted(weights) != sorted(names):
            raise ValueError(f"{self.checkpoint_path}: its trained weights do not match this model")
        with torch.no_grad():
            for name, param in self.trainable:
                param.copy_(weights[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.pretrain_optimizer is not None:
            self.pretrain_optimizer.load_state_dict(state["pretrain_optimizer"])
            self.pretrain_scheduler.load_state_dict(state["pretrain_scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.to(self.device)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        return int(state["step"])

    def _save_checkpoint(self, step: int) -> None:
        state = self._state(step)
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_path, state)
        self.accelerator.wait_for_everyone()

    # -- validation and output ---------------------------------------------------------------
    @contextlib.contextmanager
    def _ema_weights(self):
        params = [p for _, p in self.trainable]
        if self.ema is None:
            yield
            return
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def validate(self, step: int) -> Optional[Record]:
        if not self.validation_prompts:
            return None
        record = None
        if self.accelerator.is_main_process:
            config = self.config
            unet = self.accelerator.unwrap_model(self.unet)
            unet.eval()
            with self._ema_weights(), self.accelerator.autocast():
                pixels = generate_images(self.pipe, self.validation_prompts, config.validation_seed,
                                         resolution=self.resolution, num_steps=config.num_inference_steps,
                                         guidance_scale=config.guidance_scale, sampler=config.sampler,
                                         batch_size=config.train_batch_size, unet=unet)
                mean, values = mean_reward(self.reward, pixels.to(self.device), self.validation_prompts)
            unet.train()
            folder = os.path.join(config.output_dir, VALIDATION_DIR)
            os.makedirs(folder, exist_ok=True)
            save_grid(pixels, os.path.join(folder, f"step-{step:06d}.png"))
            record = {"type": "valid", "step": step, "reward_mean": mean, "rewards": values}
        self.accelerator.wait_for_everyone()
        return record

    def save_output(self, step: int) -> None:
        config = self.config
        if self.accelerator.is_main_process:
            unet = self.accelerator.unwrap_model(self.unet)
            with self._ema_weights():
                if config.lora:
                    peft_utils = require_refl("peft.utils", "saving LoRA weights")
                    diffusers_utils = require_refl("diffusers.utils", "saving LoRA weights")
                    layers = diffusers_utils.convert_state_dict_to_diffusers(
                        peft_utils.get_peft_model_state_dict(unet))
                    type(self.pipe).save_lora_weights(config.output_dir, unet_lora_layers=layers)
                else:
                    diffusers = require_refl("diffusers", "saving the pipeline")
                    pipe = diffusers.DiffusionPipeline.from_pretrained(
                        config.model, revision=config.revision or None, unet=unet)
                    pipe.save_pretrained(config.output_dir)
            settings = {"refl": config.to_dict(), "base_model": config.model, "steps": step,
                        "output": "lora" if config.lora else "pipeline", "resolution": self.resolution,
                        "imagereward_version": __version__}
            with open(os.path.join(config.output_dir, SETTINGS_FILE), "w", encoding="utf-8") as handle:
                json.dump(settings, handle, indent=2)
        self.accelerator.wait_for_everyone()

    # -- the loop --------------------------------------------------------------------------------
    def _emit(self, log: Optional[TrainLog], record: Optional[Record]) -> None:
        if record is None or log is None:
            return
        log.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def run(self) -> ReFLResult:
        config, main = self.config, self.accelerator.is_main_process
        os.makedirs(config.output_dir, exist_ok=True)
        start = self._restore() if config.resume else 0
        log_path = os.path.join(config.output_dir, LOG_FILE)
        log = TrainLog(log_path, resume_step=start if config.resume else None) if main else None
        if start == 0:
            self._emit(log, self.validate(0))
        stop_at = config.max_steps
        if config.stop_after_steps:
            stop_at = min(stop_at, start + config.stop_after_steps)
        for step in range(start, stop_at):
            tic = time.perf_counter()
            record = self.train_step(step)
            record["seconds"] = time.perf_counter() - tic
            self._emit(log, record)
            done = step + 1
            if main and (done % config.log_every == 0 or done == config.max_steps):
                pretrain = record["pretrain_loss"]
                logger.info("step %d/%d  reward loss %.5f  reward %.4f%s  %.2fs/step", done, config.max_steps,
                            record["reward_loss"], record["reward_mean"],
                            "" if pretrain is None else f"  pretraining loss {pretrain:.5f}", record["seconds"])
            if config.validation_every and done % config.validation_every == 0:
                self._emit(log, self.validate(done))
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == stop_at:
                self._save_checkpoint(done)
        finished = stop_at == config.max_steps
        if finished:
            if config.validation_every and config.max_steps % config.validation_every:
                self._emit(log, self.validate(config.max_steps))
            self.save_output(config.max_steps)
        if main:
            try:
                plot_progress(read_log(log_path), os.path.join(config.output_dir, PLOT_FILE))
            except ImportError as error:
                logger.warning("no progress plot: %s", error)
        self.accelerator.wait_for_everyone()
        return ReFLResult(config.output_dir, stop_at, finished)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _same_option(saved: Any, given: Any) -> bool:
    """Equal values; paths to the same file count as equal however they are spelled."""
    if _plain(saved) == _plain(given):
        return True
    if isinstance(saved, str) and isinstance(given, str) and saved and given:
        paths = [os.path.realpath(os.path.expanduser(v)) for v in (saved, given)]
        return os.path.exists(paths[0]) and paths[0] == paths[1]
    return False


def _state_or_none(stateful: Any) -> Optional[Dict[str, Any]]:
    return None if stateful is None else stateful.state_dict()


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device``; cast only when the precision changes (diffusers warns on every cast)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
