"""Reading rankings (test.json format, ImageRewardDB parquet, hub), pairs, splits, samplers."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest
import torch
from PIL import Image

from imagereward.config import PreprocessConfig
from imagereward.preprocess import ImagePreprocessor
from imagereward.tokenizers import BertTokenizer
from imagereward.train.data import EpochSampler, PairDataset, collate, make_pairs
from imagereward.train.sources import (
    PreferenceGroup, load_splits, read_groups, read_hub_dataset, split_groups,
)
from imagereward.train.config import TrainConfig

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ImageRewardDB-style rows: prompt 7 has ranks 1, 2, 2, 3 (one tie); prompt 9 has 2, 1.
ROWS = [
    (7, "a red fox", 2, (200, 0, 0)),
    (9, "a blue lake", 2, (0, 0, 200)),
    (7, "a red fox", 1, (250, 0, 0)),
    (7, "a red fox", 3, (50, 0, 0)),
    (9, "a blue lake", 1, (0, 0, 250)),
    (7, "a red fox", 2, (150, 0, 0)),
]


def write_parquet(path, with_bytes: bool, image_dir=None):
    columns = {
        "prompt_id": [r[0] for r in ROWS],
        "prompt": [r[1] for r in ROWS],
        "rank": [r[2] for r in ROWS],
        "classification": ["animal"] * len(ROWS),
    }
    if with_bytes:
        columns["image"] = [{"bytes": png(r[3]), "path": f"{i}.png"} for i, r in enumerate(ROWS)]
    else:
        for index, row in enumerate(ROWS):
            (image_dir / f"{index}.png").write_bytes(png(row[3]))
        columns["image_path"] = [f"images/{i}.png" for i in range(len(ROWS))]
    pq.write_table(pa.table(columns), path)
    return path


def check_imagerewarddb_groups(groups):
    assert [g.prompt for g in groups] == ["a red fox", "a blue lake"]
    assert [g.ranks for g in groups] == [[2, 1, 3, 2], [2, 1]]
    # Pairs: better = smaller rank; the tie (rows 0 and 5) is dropped.
    assert make_pairs(groups) == [(0, 1, 0), (0, 0, 2), (0, 1, 2), (0, 1, 3), (0, 3, 2), (1, 1, 0)]
    assert groups[0].images[1].load().getpixel((0, 0)) == (250, 0, 0)


def test_imagerewarddb_parquet_with_image_bytes(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", with_bytes=True)
    check_imagerewarddb_groups(read_groups(str(path)))


def test_imagerewarddb_parquet_folder_with_image_paths(tmp_path):
    (tmp_path / "db" / "images").mkdir(parents=True)
    write_parquet(tmp_path / "db" / "metadata.parquet", with_bytes=False, image_dir=tmp_path / "db" / "images")
    check_imagerewarddb_groups(read_groups(str(tmp_path / "db")))


def test_parquet_without_needed_columns_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "score": [1.0]}), path)
    with pytest.raises(ValueError, match=r"bad.parquet: columns \['image_path', 'rank'\] are missing"):
        read_groups(str(path))


def test_hub_dataset_goes_through_datasets(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "t.parquet", with_bytes=True)
    calls = []

    class FakeDataset:
        def with_format(self, kind):
            assert kind == "arrow"
            return self

        def __getitem__(self, index):
            return pq.read_table(path)

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    check_imagerewarddb_groups(read_hub_dataset("THUDM/ImageRewardDB", "1k", "validation"))
    assert calls == [("THUDM/ImageRewardDB", "1k", "validation")]


def test_missing_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'imagereward\[train\]'"):
        read_hub_dataset("THUDM/ImageRewardDB", "8k", "train")


def write_json(tmp_path, items):
    for item in items:
        for name in item["generations"]:
            Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / name)
    path = tmp_path / "rankings.json"
    path.write_text(json.dumps(items))
    return path


def test_json_rankings_pairs_and_dataset(tmp_path):
    path = write_json(tmp_path, [
        {"id": "a", "prompt": "a cat", "generations": ["1.png", "2.png", "3.png"], "ranking": [2, 1, 2]},
        {"id": "b", "prompt": "a dog", "generations": ["4.png", "5.png"], "ranking": [1, 1]},
    ])
    groups = read_groups(str(path))
    assert groups[0].images[0] == str(tmp_path / "1.png")
    assert make_pairs(groups) == [(0, 1, 0), (0, 1, 2)]  # the dog's tie gives no pair
    dataset = PairDataset(groups, BertTokenizer(max_length=12), ImagePreprocessor(PreprocessConfig(image_size=16)))
    batch = collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 12) and batch["attention_mask"].dtype == torch.long
    assert batch["better"].shape == batch["worse"].shape == (2, 3, 16, 16)


def test_json_errors_name_the_item_and_missing_images(tmp_path):
    path = write_json(tmp_path, [{"id": "x", "prompt": "p", "generations": ["1.png"], "ranking": [1, 2]}])
    with pytest.raises(ValueError, match=r"item 0 \(id x\): 1 generations but 2 ranks"):
        read_groups(str(path))
    path.write_text(json.dumps([{"prompt": "p", "generations": ["nope.png"], "ranking": [1]}]))
    with pytest.raises(FileNotFoundError, match="1 image.s. not found.*nope.png"):
        read_groups(str(path))
    with pytest.raises(ValueError, match="give a .json file"):
        read_groups(str(tmp_path / "data.csv"))


def test_validation_split_holds_out_whole_prompts(tmp_path):
    groups = [PreferenceGroup(f"p{i}", [], []) for i in range(40)]
    train, valid = split_groups(groups, 0.1, seed=3)
    assert len(valid) == 4 and len(train) == 36
    assert {g.prompt for g in train}.isdisjoint(g.prompt for g in valid)
    assert split_groups(groups, 0.1, seed=3)[1] == valid
    path = write_json(tmp_path, [
        {"prompt": f"p{i}", "generations": [f"{i}a.png", f"{i}b.png"], "ranking": [1, 2]} for i in range(10)
    ])
    train, valid, reference = load_splits(TrainConfig(train_data=str(path), valid_fraction=0.2))
    assert (len(train), len(valid)) == (8, 2) and reference is valid


def test_epoch_sampler_shards_cover_the_same_pairs_as_one_process():
    data = list(range(50))
    single = list(EpochSampler(data, 1, 0, seed=5).__iter__())
    shards = [list(EpochSampler(data, 2, r, seed=5)) for r in range(2)]
    # The first k items of both shards are the first 2k items of the one-process order.
    for k in (4, 8, 20):
        assert sorted(shards[0][:k] + shards[1][:k]) == sorted(single[: 2 * k])
    resumed = EpochSampler(data, 2, 1, seed=5)
    resumed.set_position(0, 6)
    assert list(resumed) == shards[1][6:] and len(resumed) == len(shards[1]) - 6
    resumed.set_position(1, 0)
    assert list(resumed) != shards[1]  # a new permutation each epoch
