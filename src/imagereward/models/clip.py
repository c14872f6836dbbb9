"""CLIP with a ViT image tower, parameter names as in OpenAI's checkpoints.

Both towers are pre-norm transformers whose MLP activation (QuickGELU for OpenAI,
exact GELU for OpenCLIP ViT-H-14) and head widths come from :class:`CLIPConfig`;
LayerNorm runs in float32 whatever the weights' precision, as in OpenAI's code.
The text tower is causal and reads its feature at the end-of-text token (the
highest id); the image feature is the normalised class token times ``visual.proj``.

OpenCLIP state dicts (HPSv2) use these very names; Hugging Face ``CLIPModel``
state dicts (PickScore) are translated by :func:`convert_hf_clip_state_dict`.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError
from ..config import CLIPConfig
from .layers import (
    DERIVED, Linear, PackedWeightCache, attention, can_add, fuses_post_ops, linear, merge_heads, mkl_product,
    onednn_inference, pack, packs_weight, runs_int8, runs_on_mkl, weight_key,
)

class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32, in the input's dtype out.

    A bfloat16 or float16 input goes to ATen's mixed-precision kernel with float32
    parameters, which computes in float32 too, without the float32 copies of the input
    and output (0.57x the time on ViT-H/14's rows; results within one rounding step of
    the copies' in the output dtype). A float32 input is normalised as it is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 * x)`` (OpenAI CLIP's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def inplace(x: torch.Tensor) -> torch.Tensor:
        """The same values written into ``x`` (one temporary instead of three), bitwise
        equal to :meth:`forward`; for tensors nothing else reads and autograd does not need."""
        return x.mul_(torch.sigmoid_(x * 1.702))


class SelfAttention(PackedWeightCache, nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, x: torch.Tensor, causal: bool, residual: Optional[torch.Tensor] = None,
        first_only: bool = False,
    ) -> torch.Tensor:
        """Self-attention of ``x`` ``[B, L, W]``, plus ``residual`` if given; with
        ``first_only`` (not causal), only the first token's output ``[B, 1, W]``."""
        batch, length, width = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias, self)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if first_only:
            if causal:
                raise ValueError("first_only attention is for the non-causal image tower")
            query = query[:, :, :1]
        attended = merge_heads(attention(query, key, value, causal=causal))
        return self.out_proj(attended, residual=residual)


def activation(name: str) -> nn.Module:
    """``"quick_gelu"`` (OpenAI) or ``"gelu"`` (the exact erf form, OpenCLIP and HF)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown CLIP activation {name!r}")


# QuickGELU's factor: x * sigmoid(1.702 x) = swish(1.702 x) / 1.702.
QUICK_GELU_SCALE = 1.702


class FeedForward(PackedWeightCache, nn.Module):
    def __init__(self, width: int, act: str = "quick_gelu") -> None:
        super().__init__()
        self.c_fc = Linear(width, width * 4)
        self.gelu = activation(act)
        self.c_proj = Linear(width * 4, width)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``c_proj(act(c_fc(x)))``, plus ``residual`` if given."""
        if isinstance(self.gelu, QuickGELU):
            if self._swish_applies(x):
                return self._quick_gelu_as_swish(x, residual)
            if self._silu_applies(x):
                return self._quick_gelu_as_silu(x, residual)
        if isinstance(self.gelu, nn.GELU):  # the exact form, which c_fc can fuse
            hidden = self.c_fc(x, gelu=True)
        else:
            hidden = self.c_fc(x)
            if isinstance(self.gelu, QuickGELU) and not (torch.is_grad_enabled() and hidden.requires_grad):
                hidden = QuickGELU.inplace(hidden)  # c_fc's output is ours alone
            else:
                hidden = self.gelu(hidden)
        return self.c_proj(hidden, residual=residual)

    def _swish_applies(self, x: torch.Tensor) -> bool:
        """bfloat16 inference where oneDNN runs both products with post-ops (AMX), neither int8."""
        return x.dtype == torch.bfloat16 and fuses_post_ops(x.dtype) and self._inference_products(x)

    def _silu_applies(self, x: torch.Tensor) -> bool:
        """float32 inference whose two products run through MKL (:func:`runs_on_mkl`: large
        products on AMX), neither int8."""
        return (x.dtype == torch.float32 and runs_on_mkl(x.dtype, x.numel() // x.shape[-1])
                and self._inference_products(x))

    def _inference_products(self, x: torch.Tensor) -> bool:
        """Whether both products take ``x`` on :func:`~.layers.float_linear`'s inference paths,
        neither int8."""
        fc, proj = self.c_fc, self.c_proj
        return (not runs_int8(fc) and not runs_int8(proj)
                and onednn_inference(x, fc.weight, fc.bias) and onednn_inference(x, proj.weight, proj.bias))

    def _quick_gelu_as_silu(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        """The MLP as two MKL products with QuickGELU as SiLU in place between them:
        ``QuickGELU(h) = silu(1.702 h) / 1.702``, the 1.702 being ``c_fc``'s product's own
        factor (sgemm's alpha, and its bias times 1.702) and the 1 / 1.702 ``c_proj``'s; no
        scaled copies of the weights. One pass over ``c_fc``'s output instead of three:
        2.4x faster than :meth:`QuickGELU.inplace` at 4,112 x 4,096 on AMX. The values are
        the module's up to float32 rounding, not bitwise."""
        fc, proj = self.c_fc, self.c_proj
        hidden = mkl_product(x, fc.weight, None if fc.bias is None else fc.bias * QUICK_GELU_SCALE,
                             alpha=QUICK_GELU_SCALE)
        F.silu(hidden, inplace=True)
        if residual is not None and can_add(residual, x.shape[:-1], proj.weight.shape[0], x.dtype):
            return mkl_product(hidden, proj.weight, proj.bias, alpha=1 / QUICK_GELU_SCALE, residual=residual)
        out = mkl_product(hidden, proj.weight, proj.bias, alpha=1 / QUICK_GELU_SCALE)
        return out if residual is None else out + residual

    def _quick_gelu_as_swish(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        """The MLP as two oneDNN products, QuickGELU inside the first as oneDNN's swish
        post-op (oneDNN has no QuickGELU, and its swish takes no factor): ``c_fc``'s weight
        and bias are scaled by 1.702 and ``c_proj``'s weight by 1 / 1.702, in copies kept
        beside the parameters (rounded to bfloat16 once more). QuickGELU as three passes
        over ``c_fc``'s output took 13-14% of a bf16 CLIP call on AMX; as the post-op, CLIP
        scored 1.10x faster, and its rewards were no further from float32 (mean
        |bf16 - fp32| over 32 pairs 0.00070 before, 0.00067 after)."""
        rows = x.numel() // x.shape[-1]
        up, up_bias, down = self._scaled(packs_weight(self.c_fc.weight, rows), packs_weight(self.c_proj.weight, rows))
        hidden = torch.ops.mkldnn._linear_pointwise(x, up, up_bias, "swish", [], "")
        if residual is not None and can_add(residual, x.shape[:-1], down.shape[0], x.dtype):
            return torch.ops.mkldnn._linear_pointwise.binary(hidden, residual, down, self.c_proj.bias, "add")
        out = torch.ops.mkldnn._linear_pointwise(hidden, down, self.c_proj.bias, "none", [], "")
        return out if residual is None else out + residual

    def _scaled(self, pack_up: bool, pack_down: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """``c_fc``'s weight and bias times 1.702 and ``c_proj``'s weight over it, each weight
        packed or plain as asked; made once per set of parameter values."""
        params = (self.c_fc.weight, self.c_fc.bias, self.c_proj.weight)
        key = tuple(None if p is None else weight_key(p) for p in params)
        cache = self.__dict__.get(DERIVED)
        if cache is None or cache[0] != key:
            cache = self.__dict__[DERIVED] = (key, {})
        made = cache[1]

        def scaled(name: str, source: Optional[torch.Tensor], factor: float, packed: bool) -> Optional[torch.Tensor]:
            if (name, packed) not in made:
                value = None if source is None else (source.detach().float() * factor).to(source.dtype)
                made[(name, packed)] = pack(value) if packed and value is not None else value
            return made[(name, packed)]

        return (scaled("up", self.c_fc.weight, QUICK_GELU_SCALE, pack_up),
                scaled("up_bias", self.c_fc.bias, QUICK_GELU_SCALE, False),
                scaled("down", self.c_proj.weight, 1 / QUICK_GELU_SCALE, pack_down))

class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, eps: float, act: str = "quick_gelu") -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNormFP32(width, eps=eps)
        self.mlp = FeedForward(width, act)
        self.ln_2 = LayerNormFP32(width, eps=eps)

    def forward(self, x: torch.Tensor, causal: bool, first_only: bool = False) -> torch.Tensor:
        """The block on ``[B, L, W]``; with ``first_only``, only the first token's output
        ``[B, 1, W]`` (a last block whose other outputs nothing reads)."""
        residual = x[:, :1].contiguous() if first_only else x
        x = self.attn(self.ln_1(x), causal, residual=residual, first_only=first_only)
        return self.mlp(self.ln_2(x), residual=x)


class Transformer(nn.Module):
    """A stack of residual blocks on ``[B, L, width]`` (batch first)."""

    def __init__(
        self, width: int, layers: int, heads: int, eps: float, causal: bool,
        act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.causal = causal
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, eps, act) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """``[B, L, width]`` -> ``[B, L, width]``, or with ``first_only`` the first token's
        output ``[B, 1, width]`` (the last block computes nothing else)."""
        last = len(self.resblocks) - 1
        for index, block in enumerate(self.resblocks):
            x = block(x, self.causal, first_only and index == last)
        return x


class CLIPVisionTransformer(nn.Module):
    """Normalised pixels ``[B, 3, S, S]`` -> image embeddings ``[B, embed_dim]``."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(3, width, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.num_patches + 1, width))
        self.ln_pre = LayerNormFP32(width, eps=config.layer_norm_eps)
        self.transformer = Transformer(
            width, config.vision_layers, config.vision_heads, config.layer_norm_eps, causal=False,
            act=config.act,
        )
        self.ln_post = LayerNormFP32(width, eps=config.layer_norm_eps)
        self.proj = nn.Parameter(torch.zeros(width, config.embed_dim))

    def tokens(self, pixels: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """The transformer's output for the class token and every patch ``[B, 1 + P, width]``,
        before ``ln_post`` (Hugging Face's ``last_hidden_state``); with ``cls_only``, for
        the class token alone ``[B, 1, width]``, the same values up to float rounding."""
        size = self.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"CLIP image encoder expects {size}x{size} pixels, got {tuple(pixels.shape[-2:])}"
            )
        x = self.conv1(pixels.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat((cls, x), dim=1) + self.positional_embedding.to(x.dtype)
        return self.transformer(self.ln_pre(x), first_only=cls_only)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.tokens(pixels, cls_only=True)[:, 0, :]) @ self.proj


class CLIPModel(nn.Module):
    """Both CLIP towers; ``state_dict`` keys equal those of OpenAI's ``ViT-*.pt`` files
    and of OpenCLIP's ViT state dicts."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = CLIPVisionTransformer(config)
        self.transformer = Transformer(
            config.text_width, config.text_layers, config.text_heads, config.layer_norm_eps,
            causal=True, act=config.act,
        )
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(
            torch.zeros(config.context_length, config.text_width)
        )
        self.ln_final = LayerNormFP32(config.text_width, eps=config.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``[B, embed_dim]`` in the model's dtype."""
        return self.visual(pixels)

    def text_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The normalised output of the text transformer for every position ``[B, L, width]``
        of ids ``[B, L]`` (L <= context), before the projection."""
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(
                f"token ids have {length} positions, CLIP takes {self.config.context_length}"
            )
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        return self.ln_final(self.transformer(x))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings ``[B, embed_dim]`` of ids ``[B, L]`` (L <= context).

        The embedding is the output at the end-of-text token (the highest id, its first
        occurrence), and the tower is causal: no position after it changes it. So
        positions after a row's end-of-text token (the padding up to the context length)
        are not computed: rows of similar lengths run together, each group up to its
        longest row (:func:`length_groups`). The same values up to float rounding.
        """
        eot = input_ids.argmax(dim=-1)
        lengths = (eot + 1).tolist()
        projection = self.text_projection
        features = projection.new_empty(input_ids.shape[0], projection.shape[0])
        for rows in length_groups(lengths):
            index = torch.tensor(rows, device=input_ids.device)
            x = self.text_tokens(input_ids[index, : max(lengths[row] for row in rows)])
            features[index] = x[torch.arange(len(rows), device=x.device), eot[index]]
        return features @ projection


# What one more pass of the text tower costs, in positions (rows x length) of work: the
# weights read again and smaller products. Measured on OpenCLIP ViT-H/14's text tower,
# 2 threads of an AMX Xeon: about 70 positions in bf16 and 30 in fp32.
PASS_COST = 64


def length_groups(lengths: Sequence[int], pass_cost: int = PASS_COST) -> List[List[int]]:
    """Row indices in groups of similar ``lengths`` that minimise the work of running each
    group up to its longest row: the sum over groups of rows x longest length, plus
    ``pass_cost`` per group. Rows sorted by length, split where that pays (an exact
    dynamic programme over the split points, O(rows^2))."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[row] for row in order]
    best = [0.0] + [float("inf")] * len(order)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for first in range(end):  # the last group holds ordered[first:end]
            cost = best[first] + (end - first) * ordered[end - 1] + pass_cost
            if cost < best[end]:
                best[end], start[end] = cost, first
    groups: List[List[int]] = []
    end = len(order)
    while end > 0:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.attn\.in_proj_weight")
    return len({m.group(1) for m in map(pattern.fullmatch, state_dict) if m})


def infer_clip_config(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    vision_head_width: int = 64,
    text_head_width: int = 64,
    act: str = "quick_gelu",
) -> CLIPConfig:
    """Sizes of a ViT CLIP (OpenAI/OpenCLIP names) from its weights.

    Head widths and the activation are not in the weights: the defaults are
    OpenAI's (64-wide heads, QuickGELU); OpenCLIP ViT-H-14 needs 80 / 64 and ``"gelu"``.
    """
    needed = (
        "visual.conv1.weight", "visual.positional_embedding", "visual.proj",
        "text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight",
    )
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source} is not an OpenAI ViT CLIP checkpoint nor an OpenCLIP ViT state dict "
            f"(no {', '.join(missing)}); ResNet CLIP models are not supported"
        )
    conv = state_dict["visual.conv1.weight"]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_width = conv.shape[0]
    text_width = state_dict["ln_final.weight"].shape[0]
    for tower, width, head_width in (
        ("vision", vision_width, vision_head_width), ("text", text_width, text_head_width),
    ):
        if width % head_width:
            raise CheckpointError(
                f"{source}: {tower} width {width} is not a multiple of the head width {head_width}"
            )
    return CLIPConfig.from_widths(
        vision_head_width=vision_head_width,
        text_head_width=text_head_width,
        embed_dim=state_dict["text_projection"].shape[1],
        image_size=conv.shape[-1] * grid,
        patch_size=conv.shape[-1],
        vision_width=vision_width,
        vision_layers=_count_blocks(state_dict, "visual.transformer."),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=_count_blocks(state_dict, "transformer."),
        act=act,
    )


# -- Hugging Face ``CLIPModel`` layout (PickScore) ------------------------------------------

_HF_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_HF_MODULES = {
    "visual.ln_pre": "vision_model.pre_layrnorm",  # sic: Hugging Face's spelling
    "visual.ln_post": "vision_model.post_layernorm",
    "ln_final": "text_model.final_layer_norm",
}
_HF_TENSORS = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "logit_scale": "logit_scale",
}
# Projections are ``nn.Linear`` weights ``[embed, width]`` there, ``[width, embed]`` here.
_HF_TRANSPOSED = {
    "visual.proj": "visual_projection.weight",
    "text_projection": "text_projection.weight",
}
_BLOCK_KEY = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")


def hf_clip_names(key: str) -> Tuple[str, ...]:
    """The Hugging Face ``CLIPModel`` keys that hold our parameter ``key``.

    Three keys (query, key, value) for a fused attention input projection, else one.
    """
    block = _BLOCK_KEY.fullmatch(key)
    if block:
        tower = "vision_model" if block.group(1) else "text_model"
        base = f"{tower}.encoder.layers.{block.group(2)}."
        rest = block.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            return tuple(f"{base}self_attn.{part}_proj.{kind}" for part in "qkv")
        module, _, param = rest.rpartition(".")
        return (f"{base}{_HF_BLOCK[module]}.{param}",)
    if key in _HF_TENSORS:
        return (_HF_TENSORS[key],)
    if key in _HF_TRANSPOSED:
        return (_HF_TRANSPOSED[key],)
    module, _, param = key.rpartition(".")
    if module in _HF_MODULES:
        return (f"{_HF_MODULES[module]}.{param}",)
    raise KeyError(f"no Hugging Face CLIP name for {key!r}")


def convert_hf_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Iterable[str], source: str
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Hugging Face ``CLIPModel`` weights under our names, and each of our keys' HF name.

    Query, key and value projections are fused into ``in_proj_*`` and projections
    transposed (views where possible, so memory-mapped weights stay mapped). Keys
    this layout does not explain are passed through under their own names, so that
    strict loading reports them; our keys whose HF tensors are absent are left out,
    so that it reports them missing (the returned names say what was looked for).
    """
    converted: Dict[str, torch.Tensor] = {}
    consumed: Set[str] = set()
    names: Dict[str, str] = {}
    for key in expected:
        parts = hf_clip_names(key)
        names[key] = " + ".join(parts)
        if not all(part in state_dict for part in parts):
            continue
        tensors = [state_dict[part] for part in parts]
        if len(tensors) == 3:
            if len({tuple(t.shape) for t in tensors}) != 1:
                raise CheckpointError(
                    f"{source}: {names[key]} have different shapes "
                    f"{[tuple(t.shape) for t in tensors]}"
                )
            value = torch.cat(tensors)
        elif key in _HF_TRANSPOSED:
            value = tensors[0].t()
        else:
            value = tensors[0]
        converted[key] = value
        consumed.update(parts)
    for key, value in state_dict.items():
        if key not in consumed:
            converted[key] = value
    return converted, names


def infer_hf_clip_config(
    state_dict: Mapping[str, torch.Tensor], source: str, **options: Any
) -> CLIPConfig:
    """:func:`infer_clip_config` of Hugging Face ``CLIPModel`` weights (``options``: its
    head widths and activation)."""
    ours: Dict[str, torch.Tensor] = {}
    for key in ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
                "text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"):
        name = hf_clip_names(key)[0]
        if name in state_dict:
            ours[key] = state_dict[name].t() if key in _HF_TRANSPOSED else state_dict[name]
    layer = re.compile(r"(vision|text)_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight")
    for match in filter(None, map(layer.fullmatch, state_dict)):
        prefix = "visual." if match.group(1) == "vision" else ""
        ours[f"{prefix}transformer.resblocks.{match.group(2)}.attn.in_proj_weight"] = state_dict[match.group(0)]
    return infer_clip_config(ours, source, **options)


# ``CLIPTextConfig`` / ``CLIPVisionConfig`` defaults, for config.json files that omit them.
_HF_TEXT_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
_HF_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}


def clip_config_from_hf(config: Mapping[str, Any], source: str) -> CLIPConfig:
    """Our :class:`CLIPConfig` from a Hugging Face ``CLIPModel`` ``config.json`` dict."""
    text = {**_HF_TEXT_DEFAULTS, **dict(config.get("text_config") or {})}
    vision = {**_HF_VISION_DEFAULTS, **dict(config.get("vision_config") or {})}
    problems = []
    for name, tower in (("text", text), ("vision", vision)):
        if tower["intermediate_size"] != 4 * tower["hidden_size"]:
            problems.append(f"{name} MLP width {tower['intermediate_size']} is not 4x its width")
        if tower["hidden_act"] not in ("gelu", "quick_gelu"):
            problems.append(f"{name} activation {tower['hidden_act']!r} is not supported")
    if text["hidden_act"] != vision["hidden_act"]:
        problems.append("the towers use different activations")
    if float(text["layer_norm_eps"]) != float(vision["layer_norm_eps"]):
        problems.append("the towers use different LayerNorm epsilons")
    if vision.get("num_channels", 3) != 3:
        problems.append(f"{vision['num_channels']} image channels (only RGB is supported)")
    if problems:
        raise CheckpointError(f"{source}: unsupported CLIP configuration: " + "; ".join(problems))
    text_heads, vision_heads = text["num_attention_heads"], vision["num_attention_heads"]
    return CLIPConfig(
        embed_dim=int(config.get("projection_dim", 512)),
        image_size=int(vision["image_size"]),
        patch_size=int(vision["patch_size"]),
        vision_width=int(vision["hidden_size"]),
        vision_layers=int(vision["num_hidden_layers"]),
        vision_heads=int(vision_heads),
        vision_head_width=int(vision["hidden_size"]) // int(vision_heads),
        context_length=int(text["max_position_embeddings"]),
        vocab_size=int(text["vocab_size"]),
        text_width=int(text["hidden_size"]),
        text_layers=int(text["num_hidden_layers"]),
        text_heads=int(text_heads),
        text_head_width=int(text["hidden_size"]) // int(text_heads),
        layer_norm_eps=float(text["layer_norm_eps"]),
        act=str(text["hidden_act"]),
    )
