"""Golden outputs of MPS's and HPSv3's own code on seeded tiny checkpoints.

Run ONLY in the environment of their originals (never in CI; the tests read what it writes):

    ~/.cache/imagereward-bench/hps3venv/bin/python tests/golden/make_golden_newmodels.py --mps-repo DIR

(``benchmarks/parity_newmodels.py`` creates that environment: hpsv3 1.0.0 with
transformers 4.45.2, torch 2.14.1; ``DIR`` is a checkout of github.com/Kwai-Kolors/MPS.)
Like ``make_golden_prefmodels.py``, it builds each checkpoint with ``weights.py`` and
records the original's score of every prompt with every golden image and of single pairs:

- MPS: MPS's own ``CLIPModel`` (``XCLIPModel`` on a Hugging Face folder) with its
  ``Cross_model`` at tiny sizes, the seeded tensors loaded strictly, saved whole with
  ``torch.save`` and read back with ``torch.load`` as MPS's script does, scored by its
  ``infer_one_sample`` (float32: its ``.half()`` casts are no-ops while it runs);
- HPSv3: ``hpsv3.inference.HPSv3RewardInferencer`` on a tiny Qwen2-VL folder, with the
  seeded ``HPSv3.safetensors``; the tokenizer it uses is written to
  ``tests/data/golden/HPSv3-tokenizer.json`` for the tests (its BPE is trained here, and
  training may differ between ``tokenizers`` versions). The golden also records the
  uncertainty (``sigma``) of each image for each prompt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "benchmarks"), str(REPO / "tests")]

import torch  # noqa: E402

import inputs  # noqa: E402
import newmodels_side  # noqa: E402
import weights  # noqa: E402
from make_golden import PAIRS, check_gaps, golden_record, versions, write_goldens  # noqa: E402
from make_golden_prefmodels import _ranking  # noqa: E402
from qwen_files import tiny_vlm_config, write_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("IMAGEREWARD_SHARED", REPO.parent / "shared"))
BPE = SHARED / "data" / "bpe_simple_vocab_16e6.txt.gz"
OUT = REPO / "tests" / "data" / "golden"
TOKENIZER = "HPSv3-tokenizer.json"
VERSIONS = ("torch", "transformers", "tokenizers", "hpsv3", "einops", "pillow", "numpy")

CONFIGS: Dict[str, Dict] = {
    "MPS": {"seed": 14, "mps": weights.TINY_MPS},
    "HPSv3": {"seed": 16, "head_gain": 8.0},
}
FORMATS = {"MPS": "MPS_overall_checkpoint.pth", "HPSv3": "HPSv3.safetensors"}


def mps_scorer(state: Dict, config: Dict, workdir: Path, repo: str) -> Callable[[str, List[str]], List[float]]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    script = newmodels_side._mps_imports(repo)
    from trainer.models.clip_model import CLIPModel as MPSModel
    from trainer.models.cross_modeling import Cross_model

    mps = config["mps"]
    folder = workdir / "mps-hf"
    CLIPModel(CLIPConfig(**weights.hf_clip_config(mps["clip"]))).save_pretrained(folder)
    model = MPSModel(str(folder))
    cross = mps["cross"]
    model.cross_model = Cross_model(dim=mps["clip"]["embed_dim"], layer_num=cross["layers"],
                                    dim_head=cross["head_dim"], heads=cross["heads"], ff_mult=cross["ff_mult"])
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    torch.save(model, workdir / "mps-whole.pth")  # the released format, read back as MPS's script does
    model = torch.load(workdir / "mps-whole.pth", map_location="cpu", weights_only=False).float().eval()
    files = newmodels_side.hf_tokenizer_files(str(BPE), workdir / "hf-tokenizer")
    tokenizer = CLIPTokenizerFast(**files, model_max_length=77, pad_token="<|endoftext|>")
    processor = CLIPImageProcessor()

    def score(prompt: str, images: List[str]) -> List[float]:
        half = torch.Tensor.half
        torch.Tensor.half = lambda self, *args, **kwargs: self  # float32 run (see the docstring)
        try:
            return [float(script.infer_one_sample(p, prompt, model, processor, tokenizer, "cpu")) for p in images]
        finally:
            torch.Tensor.half = half

    return score


def make(scorer: str, workdir: Path, images: List[Path], repo: str, out: Path) -> Dict:
    config = dict(CONFIGS[scorer])
    paths = [str(p) for p in images]
    if scorer == "MPS":
        state = weights.build(scorer, config)["checkpoint"]
        score = mps_scorer(state, config, workdir, repo)
        sigmas = None
    else:
        folder = workdir / "hpsv3"
        ids = write_tokenizer(folder / "tokenizer.json")
        shutil.copyfile(folder / "tokenizer.json", out / TOKENIZER)
        vocab = newmodels_side.hpsv3_folder(folder, folder / "tokenizer.json", tiny_vlm_config(ids, 0))
        config["vlm"] = tiny_vlm_config(ids, vocab)
        state = weights.build(scorer, config)["checkpoint"]
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "HPSv3.safetensors"))
        table = newmodels_side.hpsv3_rewards(folder, folder / "HPSv3.safetensors", inputs.PROMPTS, paths)
        sigmas = [[float(torch.tensor(v[1]).exp()) for v in row] for row in table]

        def score(prompt: str, images: List[str]) -> List[float]:
            rows = newmodels_side.hpsv3_rewards(folder, folder / "HPSv3.safetensors", [prompt], images)
            return [v[0] for v in rows[0]]

    rows = []
    for index, prompt in enumerate(inputs.PROMPTS):
        rewards = score(prompt, paths)
        rows.append({"prompt": index, "ranking": _ranking(rewards), "rewards": rewards})
        if sigmas is not None:
            rows[-1]["sigmas"] = sigmas[index]
    pairs = [{"prompt": p, "image": i, "score": score(inputs.PROMPTS[p], [paths[i]])[0]} for p, i in PAIRS]
    for row in rows:
        check_gaps([row], scorer, scale=max(1.0, max(abs(v) for v in row["rewards"])))
    print(f"{scorer}: score spread per prompt {[round(max(r['rewards']) - min(r['rewards']), 4) for r in rows]}")
    made_by = "tests/golden/make_golden_newmodels.py (the originals' own code; see its docstring)"
    checkpoints = {"checkpoint": {"format": FORMATS[scorer], "tensors_sha256": weights.tensor_digest(state),
                                  "keys": len(state)}}
    return golden_record(scorer, made_by, versions(VERSIONS), config, checkpoints, images, rows, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated scorers")
    parser.add_argument("--mps-repo", default=os.environ.get("MPS_REPO", str(REPO / ".bench" / "MPS")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_goldens(lambda scorer, folder, images: make(scorer, folder, images, args.mps_repo, args.out),
                      args.only.split(","), args.out, workdir)


if __name__ == "__main__":
    main()
