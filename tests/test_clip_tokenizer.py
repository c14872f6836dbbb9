"""The CLIP BPE tokenizer against OpenAI's own tokenizer file, and its edge cases."""

from __future__ import annotations

import gzip

import pytest
import torch

from helpers import CLIP_BPE
from imagereward.tokenizers import CLIPTokenizer
from imagereward.tokenizers.clip_bpe import BPE_ENV
from imagereward.tokenizers.vocab_files import CLIP_BPE_FILENAME, bundled_file
from openai_clip import load_openai_module, oracle_tokenize, varied_prompts

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer(str(CLIP_BPE))


@pytest.fixture(scope="module")
def oracle():
    module = load_openai_module("simple_tokenizer")
    if module is None:
        pytest.skip("OpenAI's clip/simple_tokenizer.py is not installed (pip install --no-deps clip-anytorch)")
    return module.SimpleTokenizer(bpe_path=str(CLIP_BPE))


def test_parity_with_openai_on_varied_prompts(tokenizer, oracle):
    prompts = varied_prompts(300, seed=1)
    ours, theirs = tokenizer(prompts), oracle_tokenize(oracle, prompts)
    mismatched = [p for p, a, b in zip(prompts, ours, theirs) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} prompts differ, first: {mismatched[:3]!r}"
    for prompt in prompts[:80]:
        assert tokenizer.encode(prompt) == oracle.encode(prompt), prompt


def test_layout_and_truncation(tokenizer):
    ids = tokenizer(["a cat", "word " * 200])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [SOT, 320, 2368, EOT] and not ids[0, 4:].any()
    assert ids[1, 0] == SOT and ids[1, -1] == EOT and ids[1, 1:-1].ne(EOT).all()
    assert tokenizer("a cat").shape == (1, 77)


def test_cleaning_matches_openai_rules(tokenizer):
    assert tokenizer.encode("Salt &amp;amp; PEPPER") == tokenizer.encode("salt & pepper")
    assert tokenizer.encode("  a \t\n cat  ") == tokenizer.encode("a cat")
    assert tokenizer.encode("<|endoftext|>") == [EOT]
    assert tokenizer.decode(tokenizer.encode("Hello, café 🐱")) == "hello , café 🐱 "


def test_custom_context_length():
    short = CLIPTokenizer(str(CLIP_BPE), context_length=8)
    ids = short("one two three four five six seven eight nine")
    assert ids.shape == (1, 8) and ids[0, -1] == EOT


def test_bpe_file_from_environment(monkeypatch):
    monkeypatch.setenv(BPE_ENV, str(CLIP_BPE))
    assert CLIPTokenizer().bpe_file == str(CLIP_BPE)


def test_bundled_bpe_file_is_the_default(monkeypatch):
    """No download, no environment variable: the merges shipped in the package (offline here)."""
    monkeypatch.delenv(BPE_ENV, raising=False)
    tokenizer = CLIPTokenizer()
    assert tokenizer.bpe_file == bundled_file(CLIP_BPE_FILENAME)
    assert torch.equal(tokenizer(["a photo of a cat"]), CLIPTokenizer(str(CLIP_BPE))(["a photo of a cat"]))


def test_bpe_file_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="merges"):
        CLIPTokenizer(str(tmp_path / "missing.txt.gz"))
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not gzip")
    with pytest.raises(ValueError, match="not a gzipped"):
        CLIPTokenizer(str(plain))
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="bad line|merges"):
        CLIPTokenizer(str(short))


def test_rejects_non_strings(tokenizer):
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        tokenizer(["ok", 3])
