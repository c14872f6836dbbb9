"""No network needed for local files: bundled tokenizer vocabularies, missing files said at once."""

from __future__ import annotations

import hashlib
import sys

import pytest

import imagereward
from helpers import BERT_VOCAB, CLIP_BPE, REPO
from imagereward.tokenizers.bert import VOCAB_ENV, BertTokenizer
from imagereward.tokenizers.clip_bpe import BPE_ENV
from imagereward.tokenizers.vocab_files import (
    BERT_VOCAB_FILENAME, CLIP_BPE_FILENAME, DATA_DIR, SHA256, bundled_file,
)


@pytest.fixture
def no_network(monkeypatch):
    """Every way the package could reach a server fails the test."""
    import urllib.request

    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv(VOCAB_ENV, raising=False)
    monkeypatch.delenv(BPE_ENV, raising=False)


def test_bundled_vocabularies_are_the_published_files():
    for filename, shared in ((BERT_VOCAB_FILENAME, BERT_VOCAB), (CLIP_BPE_FILENAME, CLIP_BPE)):
        data = open(bundled_file(filename), "rb").read()
        assert hashlib.sha256(data).hexdigest() == SHA256[filename]
        assert data == shared.read_bytes()


def test_bundled_vocabularies_are_package_data():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as handle:
        package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]
    assert sorted(package_data["imagereward.tokenizers"]) == sorted(
        f"data/{name}" for name in (BERT_VOCAB_FILENAME, CLIP_BPE_FILENAME)
    )


def test_damaged_bundled_file_is_refused(tmp_path, monkeypatch):
    import imagereward.tokenizers.vocab_files as vocab_files

    (tmp_path / BERT_VOCAB_FILENAME).write_text("[PAD]\n")
    monkeypatch.setattr(vocab_files, "DATA_DIR", str(tmp_path))
    vocab_files.bundled_file.cache_clear()
    try:
        with pytest.raises(OSError, match="damaged"):
            vocab_files.bundled_file(BERT_VOCAB_FILENAME)
    finally:
        vocab_files.bundled_file.cache_clear()
    assert DATA_DIR != str(tmp_path)


def test_local_checkpoint_needs_no_network_and_no_variable(no_network, checkpoint, config):
    model = imagereward.load(str(checkpoint), config=config, device="cpu")
    assert model.tokenizer.vocab_file == bundled_file(BERT_VOCAB_FILENAME)
    assert isinstance(model.score("a cat", str(REPO.parent / "shared/reference/data/assets/1.webp")), float)


def test_vocabulary_overrides_still_win(no_network, tmp_path, monkeypatch):
    copy = tmp_path / "vocab.txt"
    copy.write_bytes(BERT_VOCAB.read_bytes())
    assert BertTokenizer(str(copy)).vocab_file == str(copy)
    monkeypatch.setenv(VOCAB_ENV, str(copy))
    assert BertTokenizer().vocab_file == str(copy)


def test_after_one_failed_download_the_rest_are_only_looked_up(monkeypatch, tmp_path):
    """Online but unreachable: the first file's failure is the only network attempt."""
    import imagereward.factory as factory
    from imagereward.hub import is_offline

    monkeypatch.delenv("IMAGEREWARD_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    attempts = []

    def fetch_weights(spec, download_root=None, hint=None):
        attempts.append((spec.filename, is_offline()))
        raise imagereward.DownloadError(f"cannot reach the server for {spec.filename}")

    monkeypatch.setattr(factory, "fetch_weights", fetch_weights)
    with pytest.raises(imagereward.DownloadError, match="needs 2 files") as error:
        imagereward.load_score("Aesthetic", download_root=str(tmp_path), device="cpu")
    assert [offline for _, offline in attempts] == [False, True]
    assert all(f"for {name}" in str(error.value) for name, _ in attempts)
    assert not is_offline()  # the setting is restored


def test_no_name_resolution_means_no_retries_and_says_what_to_do(monkeypatch, tmp_path):
    """Without a network the hub client would retry for half a minute: the host's name is
    checked first (a resolver answers at once), and the cache is only looked in."""
    import socket

    import huggingface_hub

    from imagereward.errors import DownloadError
    from imagereward.hub import fetch_hub_file

    monkeypatch.delenv("IMAGEREWARD_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["local_files_only"])
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(DownloadError, match="no network .cannot resolve .*use --offline or --checkpoint PATH"):
        fetch_hub_file("THUDM/ImageReward", "ImageReward.pt", what="the weights", local_hint="give a file")
    assert calls == [True]  # the cache only: no network attempt, no retries
