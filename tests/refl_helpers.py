"""A tiny randomly initialised Stable Diffusion pipeline saved as a diffusers folder, and
synthetic ReFL data; shared by the ReFL tests and benchmarks/refl_*.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from helpers import CLIP_BPE

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", clip_sample=False,
                    steps_offset=1, prediction_type="epsilon")


def write_clip_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt (+ configs) of OpenAI's CLIP BPE, as Hugging Face's CLIPTokenizer reads them."""
    from imagereward.tokenizers.clip_bpe import CLIPTokenizer as OurTokenizer, _read_merges

    folder.mkdir(parents=True, exist_ok=True)
    ours = OurTokenizer(str(CLIP_BPE))
    (folder / "vocab.json").write_text(json.dumps(ours.encoder, ensure_ascii=False), encoding="utf-8")
    merges = _read_merges(str(CLIP_BPE))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}))
    return folder


def build_tiny_pipeline(root: Path, *, latent_size: int = 8, vae_blocks: int = 2, seed: int = 0,
                        sd15_size: bool = False) -> Path:
    """A random SD-1.x-shaped pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDPM scheduler).

    Images are ``latent_size * 2 ** (vae_blocks - 1)`` pixels square. ``sd15_size=True``
    gives Stable Diffusion 1.5's architecture at 512 px instead (random weights).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    if sd15_size:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                    projection_dim=768, hidden_act="quick_gelu")
    else:
        unet = UNet2DConditionModel(
            sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
            block_out_channels=tuple(16 for _ in range(vae_blocks)),
            down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks, sample_size=latent_size * 2 ** (vae_blocks - 1))
        text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                    projection_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, **text))
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(root / "_tokenizer_source")))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDPMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    folder = root / "tiny-sd"
    pipe.save_pretrained(str(folder))
    for name in ("vocab.json", "merges.txt"):  # older transformers' slow CLIPTokenizer reads these
        shutil.copyfile(root / "_tokenizer_source" / name, folder / "tokenizer" / name)
    _hub_text_encoder_keys(folder / "text_encoder")
    return folder


def _hub_text_encoder_keys(folder: Path) -> None:
    """Keys as in the hub's SD checkpoints (``text_model.`` prefix), which every transformers reads;
    transformers 5 saves them without the prefix, which transformers 4 does not recognise."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(str(path))
    save_file({(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()},
              str(path), metadata={"format": "pt"})


WORDS = ["red", "blue", "green", "cat", "dog", "house", "tree", "sky", "car", "bird", "sea", "moon"]


def write_prompts(path: Path, count: int, seed: int) -> List[str]:
    """``count`` short prompts in the original refl_data.json format."""
    rng = np.random.default_rng(seed)
    prompts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(count)]
    path.write_text(json.dumps([{"text": p, "image": f"{i:06d}"} for i, p in enumerate(prompts)]))
    return prompts


def write_pairs(folder: Path, count: int, size: int, seed: int) -> Path:
    """A folder of smooth random images with same-named .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        base = rng.uniform(0, 255, size=(2, 2, 3))
        image = Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(" ".join(rng.choice(WORDS, size=3)))
    return folder


def build_tiny_sdxl_pipeline(root: Path, *, latent_size: int = 8, seed: int = 0) -> Path:
    """A random SDXL-shaped pipeline: two CLIP text encoders (the second with projection),
    a UNet with text-time conditioning, a VAE with downscale 2."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=latent_size * 2)
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                projection_dim=32, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(root / "_tokenizer_source")))
    scheduler_config = {k: v for k, v in SD_SCHEDULER.items() if k != "clip_sample"}
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(**scheduler_config))
    folder = root / "tiny-sdxl"
    pipe.save_pretrained(str(folder))
    return folder
