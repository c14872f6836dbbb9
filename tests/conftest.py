from pathlib import Path

import pytest
import torch

from helpers import ASSETS, BERT_VOCAB, random_state_dict, save_tiny_model, tiny_config


def pytest_sessionstart(session):
    missing = [p for p in [BERT_VOCAB, *ASSETS] if not Path(p).is_file()]
    if missing:
        raise pytest.UsageError(f"shared test data missing (set IMAGEREWARD_SHARED): {missing}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a hub: offline mode on, the shared BERT vocabulary by default."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IMAGEREWARD_OFFLINE", "1")
    monkeypatch.setenv("IMAGEREWARD_BERT_VOCAB", str(BERT_VOCAB))
    torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def checkpoint(tmp_path, config):
    """A tiny random checkpoint in the original ``ImageReward.pt`` format."""
    path = tmp_path / "ImageReward.pt"
    torch.save(random_state_dict(config), path)
    return path


@pytest.fixture
def model(checkpoint, config):
    import imagereward

    return imagereward.load(str(checkpoint), config=config, device="cpu")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random ImageReward saved with save_pretrained, so the CLI needs no config flags."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))
