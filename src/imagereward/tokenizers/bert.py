"""``bert-base-uncased`` WordPiece with BLIP's two extra tokens, on HF ``tokenizers``.

Ids equal those of ``transformers.BertTokenizer.from_pretrained("bert-base-uncased")``
after BLIP adds ``[DEC]`` (30522) and ``[ENC]`` (30523). Prompts are padded and
truncated to a fixed length with ``[CLS]`` at position 0 and ``[SEP]`` at the end.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing

from ..hub import fetch_hub_file

BERT_REPO = "bert-base-uncased"
VOCAB_ENV = "IMAGEREWARD_BERT_VOCAB"
DEC_TOKEN = "[DEC]"
ENC_TOKEN = "[ENC]"


def resolve_bert_vocab(vocab_file: Optional[str] = None) -> str:
    """An explicit path, else ``$IMAGEREWARD_BERT_VOCAB``, else ``vocab.txt`` of the hub repo."""
    path = vocab_file or os.environ.get(VOCAB_ENV)
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "BERT vocabulary file not found", path)
        return path
    return fetch_hub_file(BERT_REPO, "vocab.txt", what="the bert-base-uncased vocabulary",
                          local_hint=f"set {VOCAB_ENV}=/path/to/vocab.txt")


class BertTokenizer:
    """Callable: prompts -> ``{"input_ids", "attention_mask"}`` int64 tensors ``[N, max_length]``."""

    def __init__(self, vocab_file: Optional[str] = None, max_length: int = 35) -> None:
        path = resolve_bert_vocab(vocab_file)
        vocab: Dict[str, int] = {}
        with open(path, "r", encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                vocab[line.rstrip("\n")] = index
        for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if token not in vocab:
                raise ValueError(f"{path} is not a BERT vocabulary: {token} is missing")
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

    def tokenize(self, prompt: str) -> list:
        """WordPiece tokens of one prompt, without special tokens or padding."""
        return self._tokenizer.encode(prompt, add_special_tokens=False).tokens
