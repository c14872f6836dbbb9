"""Our CLIP BPE tokenizer against OpenAI's ``simple_tokenizer.py`` on many prompts.

    python benchmarks/clip_tokenizer_parity.py [--count 2000] [--bpe PATH]

Compares the ``[N, 77]`` ids (``clip.tokenize(..., truncate=True)`` rule) on
generated hard prompts and on every prompt of the reference data files
(test.json, benchmark-prompts.json, refl_data.json). Needs ``clip-anytorch``
installed (``pip install --no-deps clip-anytorch==2.6.0``). Exit status 1 on
any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import CLIP_BPE, REFERENCE_DATA  # noqa: E402
from openai_clip import load_openai_module, oracle_tokenize, varied_prompts  # noqa: E402


def corpora(count: int) -> Dict[str, List[str]]:
    """Named lists of prompts: generated ones, then those of each reference data file."""
    found = {"generated": varied_prompts(count, seed=2024)}
    files = {
        "test.json": ("test.json", "prompt"),
        "benchmark-prompts.json": ("benchmark-prompts.json", "prompt"),
        "refl_data.json": ("refl_data.json", "text"),
    }
    for label, (name, field) in files.items():
        path = REFERENCE_DATA / name
        if path.is_file():
            found[label] = [item[field] for item in json.loads(path.read_text(encoding="utf-8"))]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="generated prompts")
    parser.add_argument("--bpe", default=str(CLIP_BPE), help="bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args()

    module = load_openai_module("simple_tokenizer")
    if module is None:
        print("OpenAI's clip/simple_tokenizer.py is missing: pip install --no-deps clip-anytorch==2.6.0")
        return 2
    from imagereward.tokenizers import CLIPTokenizer

    ours, oracle = CLIPTokenizer(args.bpe), module.SimpleTokenizer(bpe_path=args.bpe)
    failures = 0
    print(f"{'corpus':<24}{'prompts':>9}{'match':>9}{'differ':>8}{'fill 77':>9}{'ours s':>9}{'OpenAI s':>10}")
    for label, prompts in corpora(args.count).items():
        start = time.perf_counter()
        mine = ours(prompts)
        mine_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = oracle_tokenize(oracle, prompts)
        theirs_s = time.perf_counter() - start
        same = (mine == theirs).all(dim=1)
        full = int((theirs[:, -1] == oracle.encoder["<|endoftext|>"]).sum())
        differ = [p for p, ok in zip(prompts, same.tolist()) if not ok]
        failures += len(differ)
        print(f"{label:<24}{len(prompts):>9}{int(same.sum()):>9}{len(differ):>8}{full:>9}"
              f"{mine_s:>9.2f}{theirs_s:>10.2f}")
        for prompt in differ[:5]:
            print(f"    differs: {prompt!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
