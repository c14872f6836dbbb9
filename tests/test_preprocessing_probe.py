"""What a runner reads of a model before any scorer loads: its preprocessing, cheaply.

``imagereward.factory.preprocessing`` (``ModelSpec.preprocessing``) must give the very
configuration ``load()`` gives the scorer, for every registered scorer in its original
file format and as a saved folder, and it must never cast the weights or place them
(a float32 copy of HPSv3's 7B weights would be 30 GB of memory on the worker that asks).
"""

from __future__ import annotations

import pytest

import imagereward
from imagereward.factory import preprocessing
from imagereward.runners.dataset.models import preprocess_configs
from imagereward.scoring.scorer import RewardScorer
from imagereward.spec import ModelSpec
from scorer_files import write_all


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("probe"))


def test_the_preprocessing_is_what_load_gives(originals, tmp_path):
    for name, (files, options) in originals.items():
        scorer = imagereward.load(name, files=files, device="cpu", num_workers=0, **options)
        assert preprocessing(name, files=files, **options) == scorer.preprocess.config, name
        folder = imagereward.save_pretrained(scorer, str(tmp_path / name))
        assert preprocessing(folder) == scorer.preprocess.config, name


def test_reading_it_neither_casts_nor_places(originals, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the preprocessing probe cast or placed a scorer")

    monkeypatch.setattr(RewardScorer, "place", refuse)
    monkeypatch.setattr(RewardScorer, "set_compute_dtype", refuse)
    specs = [ModelSpec(name, files, options=options) for name, (files, options) in originals.items()]
    configs = preprocess_configs(specs)
    assert configs == [preprocessing(s.name, files=s.files, **s.options).to_dict() for s in specs]
    assert {s.name for s in specs} >= {"ImageReward-v1.0", "CLIP", "HPSv2.1", "MPS", "HPSv3"}
