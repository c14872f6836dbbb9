"""CLIP's byte-level BPE tokenizer, written from its published behaviour.

Three front ends share one BPE (the 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz``):

- ``"openai"`` (OpenAI ``clip.tokenize``, the default): text cleaned with
  ``ftfy.fix_text``, HTML entities unescaped twice, whitespace runs collapsed,
  lower-cased; ``<|startoftext|>`` / ``<|endoftext|>`` in the text are the special ids.
- ``"open_clip"`` (OpenCLIP's ``tokenize``, HPSv2): the same cleaning, but the special
  tokens are spelled ``<start_of_text>`` / ``<end_of_text>`` in the text.
- ``"hf"`` (Hugging Face ``CLIPTokenizerFast``, PickScore's processor): no ftfy and
  no HTML unescaping; Unicode NFC, whitespace runs to one space, lower-casing; then
  the special tokens are cut out of the normalised text before words are split
  (so ``"!<|endoftext|>"`` ends the text here, while OpenAI reads it as punctuation).

Words are then split with CLIP's regular expression, mapped byte by byte onto
printable characters and merged. Prompts become ``[SOT] tokens [EOT]`` zero-padded
to 77 ids; longer prompts keep their first 75 tokens and end with ``[EOT]``
(``clip.tokenize(..., truncate=True)``, OpenCLIP, and HF with ``truncation=True``).
"""

from __future__ import annotations

import gzip
import html
import os
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ftfy
import regex
import torch

from ..errors import TokenizerFileError
from .vocab_files import CLIP_BPE_FILENAME, bundled_file

# The package ships the merges file of the openai/CLIP repository (clip/bpe_simple_vocab_16e6.txt.gz).
BPE_ENV = "IMAGEREWARD_CLIP_BPE"

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
# CLIP's vocabulary: 256 byte symbols, the same with a word end, the merges, 2 specials.
NUM_MERGES = 49152 - 256 - 2

_WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
# How each front end spells the start and end tokens inside a prompt.
SPECIAL_SPELLINGS = {
    "openai": (SOT_TOKEN, EOT_TOKEN),
    "open_clip": ("<start_of_text>", "<end_of_text>"),
    "hf": (SOT_TOKEN, EOT_TOKEN),
}
TEXT_STYLES = tuple(SPECIAL_SPELLINGS)
_WHITESPACE = regex.compile(r"\s+")
_CACHE_LIMIT = 100_000


def resolve_clip_bpe(bpe_file: Optional[str] = None) -> str:
    """An explicit path, else ``$IMAGEREWARD_CLIP_BPE``, else the merges shipped in the package."""
    path = bpe_file or os.environ.get(BPE_ENV)
    if path:
        if not os.path.isfile(path):
            what = "is a folder" if os.path.isdir(path) else "not found"
            raise FileNotFoundError(2, f"CLIP BPE merges file {what}", path)
        return path
    return bundled_file(CLIP_BPE_FILENAME)


def byte_table() -> List[Tuple[int, str]]:
    """``(byte, symbol)`` for all 256 bytes, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the remaining
    bytes (controls, space, soft hyphen, ...) follow as code points 256, 257, ...
    """
    def printable(b: int) -> bool:
        return ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF

    kept = [(b, chr(b)) for b in range(256) if printable(b)]
    moved = [b for b in range(256) if not printable(b)]
    return kept + [(b, chr(256 + n)) for n, b in enumerate(moved)]


def clean_text(text: str) -> str:
    """OpenAI's cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def clean_text_hf(text: str) -> str:
    """Hugging Face's fast CLIP normaliser: NFC, whitespace runs to one space, lower-case."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()


def _read_merges(path: str) -> List[Tuple[str, str]]:
    try:
        with gzip.open(path, "rb") as handle:
            lines = handle.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise TokenizerFileError(f"{path} is not a gzipped CLIP BPE merges file: {error}") from error
    merges = []
    for line in lines[1 : NUM_MERGES + 1]:  # line 0 is a version header
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerFileError(f"{path} is not a CLIP BPE merges file: bad line {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise TokenizerFileError(f"{path} holds {len(merges)} merges, CLIP needs {NUM_MERGES}")
    return merges


class CLIPTokenizer:
    """Callable: prompts -> ``int64`` ids ``[N, context_length]`` exactly as ``clip.tokenize``.

    Rows are padded with 0, or with the end-of-text id where ``pad_with_eot`` (as the
    Hugging Face tokenizers of OpenAI's and LAION's CLIP models pad with ``padding="max_length"``).
    """

    def __init__(
        self, bpe_file: Optional[str] = None, context_length: int = 77, text_style: str = "openai",
        pad_with_eot: bool = False,
    ) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        if text_style not in TEXT_STYLES:
            raise ValueError(f"text_style must be one of {TEXT_STYLES}, got {text_style!r}")
        self.text_style = text_style
        sot, eot = SPECIAL_SPELLINGS[text_style]
        self._specials = {sot: SOT_TOKEN, eot: EOT_TOKEN}
        specials = "|".join(regex.escape(t) for t in self._specials)
        if text_style == "hf":
            self._words = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
            self._split_specials = regex.compile(f"({specials})")
        else:
            self._words = regex.compile(f"{specials}|{_WORD_PATTERN}", regex.IGNORECASE)
        path = resolve_clip_bpe(bpe_file)
        merges = _read_merges(path)
        table = byte_table()
        symbols = [symbol for _, symbol in table]
        vocab = symbols + [s + WORD_END for s in symbols] + [a + b for a, b in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: Dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self.decoder: Dict[int, str] = {index: token for token, index in self.encoder.items()}
        self.merge_ranks: Dict[Tuple[str, str], int] = {pair: r for r, pair in enumerate(merges)}
        self.byte_encoder = dict(table)
        self.byte_decoder = {s: b for b, s in self.byte_encoder.items()}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.context_length = context_length
        self.pad_token_id = self.eot_token_id if pad_with_eot else 0
        self.bpe_file = path
        self._cache: Dict[str, List[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _merge(self, word: str) -> List[str]:
        """Apply the merges to one byte-mapped word, lowest rank first."""
        parts = list(word[:-1]) + [word[-1] + WORD_END]
        ranks = self.merge_ranks
        while len(parts) > 1:
            best: Optional[Tuple[str, str]] = None
            best_rank = len(ranks)
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair, best_rank)
                if rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: List[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> List[int]:
        ids = self._cache.get(word)
        if ids is None:
            if word in self._specials:
                ids = [self.encoder[self._specials[word]]]
            else:
                mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids = [self.encoder[part] for part in self._merge(mapped)]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text, without start/end tokens or padding."""
        ids: List[int] = []
        if self.text_style == "hf":
            for piece in self._split_specials.split(clean_text_hf(text)):
                if piece in self._specials:
                    ids.append(self.encoder[self._specials[piece]])
                    continue
                for word in self._words.findall(piece):
                    ids.extend(self._word_ids(word))
            return ids
        for word in self._words.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of BPE ids (special tokens kept; word ends become spaces)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(WORD_END, " ")

    def __call__(self, prompts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.context_length
        result = torch.full((len(prompts), length), self.pad_token_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{row}] must be a str, got {type(prompt).__name__}")
            ids = [self.sot_token_id] + self.encode(prompt) + [self.eot_token_id]
            if len(ids) > length:
                ids = ids[: length - 1] + [self.eot_token_id]
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result
