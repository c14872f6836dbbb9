"""The two tokenizer vocabularies shipped inside the package, checked against their sha256.

``bert-base-uncased-vocab.txt`` is ``vocab.txt`` of the Hugging Face repo
``bert-base-uncased`` (30,522 WordPiece tokens); ``bpe_simple_vocab_16e6.txt.gz`` is
the merges file of OpenAI's CLIP repository. Both are public and small, so a local
checkpoint needs no network and no environment variable.
"""

from __future__ import annotations

import functools
import hashlib
import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

BERT_VOCAB_FILENAME = "bert-base-uncased-vocab.txt"
CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"

SHA256 = {
    BERT_VOCAB_FILENAME: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    CLIP_BPE_FILENAME: "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
}


@functools.lru_cache(maxsize=None)
def bundled_file(filename: str) -> str:
    """Path of a shipped vocabulary file, verified once per process against its sha256."""
    path = os.path.join(DATA_DIR, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Bundled tokenizer file missing from the installation", path)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    if digest != SHA256[filename]:
        raise OSError(
            f"bundled tokenizer file {path} is damaged (sha256 {digest}, expected "
            f"{SHA256[filename]}); reinstall imagereward"
        )
    return path
