"""The registry of scorers: every name :func:`imagereward.load` accepts, with all it needs.

An entry says how to build the scorer (a ``module:function`` builder, imported only
when the scorer is loaded), which weight files it reads (a Hugging Face Hub repo
or a pinned URL, with a sha256 where one is known), its model configuration, its
whole preprocessing chain, its tokenizer, and which checkpoint keys it knows to
be unused or how to remap them. The command line reads its model names from here.

This module imports neither torch nor any model code, so listing names is instant.
Adding a scorer is one model file, one scorer file with its builder, and one
:func:`register` call (see ``docs/adding-a-scorer.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import BLIPScoreConfig, CLIPConfig, HPSv3Config, ImageRewardConfig, MPSConfig, PreprocessConfig
from .errors import UnknownModelError


@dataclass(frozen=True)
class WeightsFile:
    """One file a scorer reads: from a hub repo or a URL, cached under ``filename``.

    ``aliases`` are other names the file may have in a cache folder (the original
    package saved some under URL-quoted names).
    """

    filename: str
    what: str
    repo_id: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None
    aliases: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.url is None):
            raise ValueError(f"{self.filename}: give exactly one of repo_id and url")


# Text tokenizers a scorer may name; the token length comes from its model config.
# The CLIP BPE comes with three front ends: OpenAI's (clip_bpe), OpenCLIP's
# (clip_bpe_openclip) and Hugging Face's fast tokenizer's (clip_bpe_hf; clip_bpe_hf_eot_pad
# pads to the full length with the end-of-text id, as MPS tokenises). "qwen2_vl" is
# HPSv3's chat prompt on Qwen2-VL's tokenizer (a file the scorer downloads).
TOKENIZERS = ("bert", "clip_bpe", "clip_bpe_openclip", "clip_bpe_hf", "clip_bpe_hf_eot_pad", "qwen2_vl")


@dataclass(frozen=True)
class ScorerEntry:
    """Everything needed to turn a name into a ready scorer.

    ``files`` maps a role to a file; the role ``"weights"`` is the scorer's own
    checkpoint, others are parts it shares (Aesthetic reads CLIP's image tower as
    ``"clip"``); a role whose file is another scorer's file (the same :class:`WeightsFile`)
    takes that scorer's local file when one is given. ``config`` is the model
    configuration, or ``None`` where the sizes are read from the weights; ``config_type``
    is its class, which saved folders record. ``ignore_keys`` are regular expressions
    of checkpoint keys that are known and unused. A checkpoint in another layout is
    remapped by the builder (PickScore's reads Hugging Face names).
    """

    name: str
    builder: str
    files: Mapping[str, WeightsFile]
    config: Any
    config_type: type
    preprocess: PreprocessConfig
    tokenizer: Optional[str]  # one of TOKENIZERS, or None for image-only scorers
    description: str
    ignore_keys: Tuple[str, ...] = ()
    aliases: Tuple[str, ...] = ()
    original_api: str = "load_score"  # which drop-in function of image-reward 1.5 lists it
    # Published preference accuracy (%) on ImageReward's test set, for reports.
    published_accuracy: Optional[float] = None
    # The precision load() picks on a GPU when none is asked for (None: float32).
    gpu_dtype: Optional[str] = None


_REGISTRY: Dict[str, ScorerEntry] = {}
_LOOKUP: Dict[str, str] = {}


def register(entry: ScorerEntry) -> ScorerEntry:
    """Add ``entry``; its name and aliases become valid for :func:`imagereward.load`."""
    keys = [entry.name.lower(), *(alias.lower() for alias in entry.aliases)]
    taken = [key for key in keys if key in _LOOKUP]
    if taken:
        raise ValueError(f"scorer names already registered: {taken}")
    if "weights" not in entry.files:
        raise ValueError(f"{entry.name}: files must include the role 'weights'")
    if entry.tokenizer is not None and entry.tokenizer not in TOKENIZERS:
        raise ValueError(f"{entry.name}: tokenizer {entry.tokenizer!r} is not one of {TOKENIZERS}")
    _REGISTRY[entry.name] = entry
    for key in keys:
        _LOOKUP[key] = entry.name
    return entry


def unregister(name: str) -> None:
    """Remove a registered scorer (for scratch entries, e.g. in tests)."""
    entry = get_entry(name)
    del _REGISTRY[entry.name]
    for key in [k for k, v in _LOOKUP.items() if v == entry.name]:
        del _LOOKUP[key]


def find_entry(name: str) -> Optional[ScorerEntry]:
    """The entry for ``name`` or one of its aliases, case-insensitively; ``None`` if unknown."""
    canonical = _LOOKUP.get(name.strip().lower()) if isinstance(name, str) else None
    return _REGISTRY[canonical] if canonical else None


def get_entry(name: str) -> ScorerEntry:
    entry = find_entry(name)
    if entry is None:
        raise UnknownModelError(f"Model {name} not found; available models = {available_models()}")
    return entry


def sharing_roles(entry: ScorerEntry, role: str) -> List[Tuple[str, str]]:
    """Other ``(scorer, role)`` pairs that read the very file ``entry`` reads for ``role``
    (Aesthetic's ``"clip"`` is CLIP's ``"weights"``)."""
    spec = entry.files[role]
    return [
        (other.name, other_role)
        for other in _REGISTRY.values()
        for other_role, other_spec in other.files.items()
        if other_spec == spec and (other.name, other_role) != (entry.name, role)
    ]


def available_models() -> List[str]:
    """Every registered scorer name, in registration order."""
    return list(_REGISTRY)


def published_accuracies() -> Dict[str, float]:
    """Published preference accuracies (%) on ImageReward's test set, by scorer name."""
    return {n: e.published_accuracy for n, e in _REGISTRY.items() if e.published_accuracy is not None}


def available_scores() -> List[str]:
    """The names the original package's ``load_score`` takes (and newer models like them)."""
    return [name for name, entry in _REGISTRY.items() if entry.original_api == "load_score"]


# -- the scorers of the paper ---------------------------------------------------------
_OPENAI_CLIP = WeightsFile(
    filename="ViT-L-14.pt",
    what="the OpenAI CLIP ViT-L/14 weights",
    url="https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
)
# Parts of BLIP's pretraining checkpoint that no scorer here uses.
_BLIP_PRETRAIN_UNUSED = (
    r"(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|text_decoder|itm_head)\..*",
    r"temp|image_queue|text_queue|queue_ptr",
    r"text_encoder\.embeddings\.position_ids",
)

register(
    ScorerEntry(
        name="ImageReward-v1.0",
        builder="imagereward.scoring.image_reward:build",
        files={
            "weights": WeightsFile(
                filename="ImageReward.pt",
                what="the ImageReward-v1.0 weights",
                repo_id="THUDM/ImageReward",
            )
        },
        config=ImageRewardConfig(),
        config_type=ImageRewardConfig,
        preprocess=PreprocessConfig(),
        tokenizer="bert",
        description="ImageReward: BLIP ViT-L/16 + BERT-base with cross-attention and an MLP "
        "head, trained on 137k expert comparisons (rewards normalised to mean 0, std 1)",
        ignore_keys=(
            r"blip\.vision_proj\..*",
            r"blip\.text_proj\..*",
            r"blip\.text_encoder\.embeddings\.position_ids",
        ),
        aliases=("ImageReward",),
        original_api="load",
        published_accuracy=65.14,  # the paper's Table 3
    )
)
register(
    ScorerEntry(
        name="CLIP",
        builder="imagereward.scoring.clip_score:build",
        files={"weights": _OPENAI_CLIP},
        config=None,  # sizes read from the weights
        config_type=CLIPConfig,
        preprocess=PreprocessConfig(),
        tokenizer="clip_bpe",
        description="CLIP score: cosine of OpenAI CLIP ViT-L/14 text and image embeddings",
        published_accuracy=54.82,  # the paper's Table 3
    )
)
register(
    ScorerEntry(
        name="BLIP",
        builder="imagereward.scoring.blip_score:build",
        files={
            "weights": WeightsFile(
                filename="model_large.pth",
                what="the BLIP-large pretraining weights",
                url="https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
                "model_large.pth",
            )
        },
        config=BLIPScoreConfig(),
        config_type=BLIPScoreConfig,
        preprocess=PreprocessConfig(),
        tokenizer="bert",
        description="BLIP score: cosine of BLIP-large's projected unimodal text and image features",
        ignore_keys=_BLIP_PRETRAIN_UNUSED,
        published_accuracy=57.76,  # the paper's Table 3
    )
)
register(
    ScorerEntry(
        name="Aesthetic",
        builder="imagereward.scoring.aesthetic_score:build",
        files={
            "weights": WeightsFile(
                filename="sac+logos+ava1-l14-linearMSE.pth",
                what="the LAION improved aesthetic predictor weights",
                url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                "sac%2Blogos%2Bava1-l14-linearMSE.pth",
                aliases=("sac%2Blogos%2Bava1-l14-linearMSE.pth",),  # the name the original writes
            ),
            "clip": _OPENAI_CLIP,
        },
        config=None,  # CLIP sizes read from the weights
        config_type=CLIPConfig,
        preprocess=PreprocessConfig(),
        tokenizer=None,
        description="LAION aesthetic predictor on CLIP ViT-L/14 image embeddings (about 1-10; "
        "the prompt is ignored)",
        published_accuracy=57.35,  # the paper's Table 3
    )
)

# -- newer preference models on CLIP ViT-H-14 (docs/preference-models.md) -----------------
register(
    ScorerEntry(
        name="PickScore",
        builder="imagereward.scoring.pickscore:build",
        files={
            "weights": WeightsFile(
                filename="model.safetensors",
                what="the PickScore weights",
                repo_id="yuvalkirstain/PickScore_v1",
            )
        },
        config=None,  # config.json beside local weights, else PickScore's ViT-H-14
        config_type=CLIPConfig,
        # The processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (CLIPImageProcessor).
        preprocess=PreprocessConfig(crop="center_floor", convert_rgb="first"),
        tokenizer="clip_bpe_hf",
        description="PickScore v1: CLIP ViT-H-14 fine-tuned on Pick-a-Pic; "
        "logit_scale.exp() * cosine (about 100 x cos)",
        ignore_keys=(r"(text|vision)_model\.embeddings\.position_ids",),  # HF buffers
        aliases=("PickScore_v1",),
        published_accuracy=62.9,  # by the HPSv2 authors' count
    )
)
for _name, _file, _accuracy in (
    ("HPSv2", "HPS_v2_compressed.pt", 65.7),
    ("HPSv2.1", "HPS_v2.1_compressed.pt", 66.8),
):
    register(
        ScorerEntry(
            name=_name,
            builder="imagereward.scoring.hps:build",
            files={
                "weights": WeightsFile(
                    filename=_file, what=f"the {_name} weights", repo_id="xswu/HPSv2"
                )
            },
            config=None,  # sizes read from the weights (OpenCLIP ViT-H-14 head widths)
            config_type=CLIPConfig,
            # hpsv2's validation transform: RGB first, longer side to 224, black padding.
            preprocess=PreprocessConfig(crop="pad", convert_rgb="first"),
            tokenizer="clip_bpe_openclip",
            description=f"{_name}: OpenCLIP ViT-H-14 fine-tuned on Human Preference Dataset v2; "
            "cosine of image and text features",
            published_accuracy=_accuracy,  # by the HPSv2 authors' count
        )
    )

register(
    ScorerEntry(
        name="MPS",
        builder="imagereward.scoring.mps:build",
        files={
            "weights": WeightsFile(
                filename="MPS_overall_checkpoint.pth",
                what="the MPS (overall) weights",
                # The authors publish this file on Google Drive only (Kwai-Kolors/MPS README).
                url="https://drive.usercontent.google.com/download?"
                "id=17qrK_aJkVNM75ZEvMEePpLj6L867MLkN&export=download&confirm=t",
            )
        },
        config=None,  # CLIP sizes read from the weights; MPSConfig's defaults otherwise
        config_type=MPSConfig,
        # MPS's processor is laion/CLIP-ViT-H-14's CLIPImageProcessor, as PickScore's.
        preprocess=PreprocessConfig(crop="center_floor", convert_rgb="first"),
        tokenizer="clip_bpe_hf_eot_pad",
        description="MPS (overall): CLIP ViT-H-14 with a condition-aware cross-modeling head, "
        "trained on 918k multi-dimensional preferences; logit_scale.exp() * cosine (about 100 x cos)",
        aliases=("MPS-overall",),
        published_accuracy=67.5,  # MPS paper, ImageReward test set
    )
)

register(
    ScorerEntry(
        name="HPSv3",
        builder="imagereward.scoring.hpsv3:build",
        files={
            "weights": WeightsFile(filename="HPSv3.safetensors", what="the HPSv3 weights", repo_id="MizzenAI/HPSv3"),
            "tokenizer": WeightsFile(
                filename="tokenizer.json", what="Qwen2-VL's tokenizer", repo_id="Qwen/Qwen2-VL-7B-Instruct"
            ),
        },
        config=None,  # a Qwen2-VL config.json beside local weights, else Qwen2-VL-7B's
        config_type=HPSv3Config,
        # HPSv3's scoring: RGB, PIL bicubic to 256 x 28 x 28 pixels at the image's aspect
        # ratio (sides multiples of 28), Qwen2-VL's (= OpenAI CLIP's) mean and std.
        preprocess=PreprocessConfig(
            crop="native", convert_rgb="first", min_pixels=256 * 28 * 28, max_pixels=256 * 28 * 28, size_factor=28,
        ),
        tokenizer="qwen2_vl",
        description="HPSv3: Qwen2-VL-7B with an uncertainty-aware reward head, trained on HPDv3 "
        "(needs imagereward[vlm]; score is the mean, score_details also the sigma)",
        ignore_keys=(r"lm_head\.weight",),
        published_accuracy=67.0,  # HPSv3 paper, ImageReward test set
        gpu_dtype="bf16",
    )
)

# The paper's order of the four scorers (Table 3), used for reports and ``--models all``.
PAPER_SCORERS = ("ImageReward-v1.0", "CLIP", "BLIP", "Aesthetic")

__all__ = [
    "PAPER_SCORERS",
    "ScorerEntry",
    "TOKENIZERS",
    "WeightsFile",
    "available_models",
    "available_scores",
    "published_accuracies",
    "find_entry",
    "get_entry",
    "register",
    "sharing_roles",
    "unregister",
]
