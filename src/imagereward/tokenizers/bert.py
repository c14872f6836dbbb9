"""``bert-base-uncased`` WordPiece with BLIP's two extra tokens, on HF ``tokenizers``.

Ids equal those of ``transformers.BertTokenizer.from_pretrained("bert-base-uncased")``
after BLIP adds ``[DEC]`` (30522) and ``[ENC]`` (30523). Prompts are padded and
truncated to a fixed length with ``[CLS]`` at position 0 and ``[SEP]`` at the end.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing

from ..errors import TokenizerFileError
from .vocab_files import BERT_VOCAB_FILENAME, bundled_file

VOCAB_ENV = "IMAGEREWARD_BERT_VOCAB"
DEC_TOKEN = "[DEC]"
ENC_TOKEN = "[ENC]"


def resolve_bert_vocab(vocab_file: Optional[str] = None) -> str:
    """An explicit path, else ``$IMAGEREWARD_BERT_VOCAB``, else the vocabulary shipped in the package."""
    path = vocab_file or os.environ.get(VOCAB_ENV)
    if path:
        if not os.path.isfile(path):
            what = "is a folder" if os.path.isdir(path) else "not found"
            raise FileNotFoundError(2, f"BERT vocabulary file {what}", path)
        return path
    return bundled_file(BERT_VOCAB_FILENAME)


def read_bert_vocab(path: str) -> Dict[str, int]:
    """Token -> id of a ``vocab.txt`` (one token per line); errors name the file."""
    vocab: Dict[str, int] = {}
    try:
        with open(path, "r", encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                vocab[line.rstrip("\n")] = index
    except UnicodeDecodeError as error:
        compressed = " (it looks gzip-compressed: unpack it first)" if error.object[:2] == b"\x1f\x8b" else ""
        raise TokenizerFileError(
            f"{path} is not a BERT vocabulary: not UTF-8 text{compressed}; "
            "expected vocab.txt with one token per line"
        ) from None
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if token not in vocab:
            raise TokenizerFileError(f"{path} is not a BERT vocabulary: {token} is missing")
    return vocab


class BertTokenizer:
    """Callable: prompts -> ``{"input_ids", "attention_mask"}`` int64 tensors ``[N, max_length]``."""

    def __init__(self, vocab_file: Optional[str] = None, max_length: int = 35) -> None:
        path = resolve_bert_vocab(vocab_file)
        vocab = read_bert_vocab(path)
        tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tokenizer.pre_tokenizer = BertPreTokenizer()
        tokenizer.add_special_tokens([DEC_TOKEN, ENC_TOKEN])
        cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
        tokenizer.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(length=max_length, pad_id=vocab["[PAD]"], pad_token="[PAD]")
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.vocab_file = path
        self.dec_token_id = tokenizer.token_to_id(DEC_TOKEN)
        self.enc_token_id = tokenizer.token_to_id(ENC_TOKEN)

    def __call__(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        encodings = self._tokenizer.encode_batch(list(prompts))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def truncated(self, prompts: Sequence[str]) -> List[str]:
        """The prompts that do not fit ``max_length`` tokens (with ``[CLS]`` and ``[SEP]``):
        the words past the limit are cut, so they cannot affect a reward."""
        return [p for p in prompts if self._tokenizer.encode(p).overflowing]

    def tokenize(self, prompt: str) -> list:
        """WordPiece tokens of one prompt, without special tokens or padding."""
        return self._tokenizer.encode(prompt, add_special_tokens=False).tokens
