"""Evaluation end to end through the CLI: test.json subsets, downloads, safe unzip, benchmark."""

import hashlib
import json
import os
import stat
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import imagereward
from helpers import REFERENCE_DATA, TEST_JSON, save_tiny_model, run_cli as run
from imagereward.cli.common import EXIT_FAILURE, EXIT_INPUT
from imagereward.eval import data as eval_data
from imagereward.eval import report
from imagereward.eval.data import DataError, UnsafeArchiveError, load_test_json, safe_extract
from imagereward.eval.metrics import preference_accuracy

N_PROMPTS = 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random ImageReward saved with save_pretrained, so the CLI needs no config flags."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=1)


def write_images(root, relative_paths, seed=0):
    """Small stand-in images with varied size and brightness."""
    rng = np.random.default_rng(seed)
    for relative in relative_paths:
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size = (int(rng.integers(32, 64)), int(rng.integers(32, 64)), 3)
        pixels = rng.integers(0, 255, size) * rng.uniform(0.2, 1.0)
        Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """The first prompts of the real test.json, with generated images in its layout."""
    root = tmp_path_factory.mktemp("subset")
    items = json.loads(TEST_JSON.read_text(encoding="utf-8"))[:N_PROMPTS]
    (root / "test.json").write_text(json.dumps(items, indent=4), encoding="utf-8")
    write_images(root / "images", [g for item in items for g in item["generations"]])
    return root, items


class BrightnessScorer:
    """Stands in for a baseline: the mean brightness of each image."""

    def score_batch(self, prompts, images):
        return [float(np.asarray(Image.open(p).convert("L")).mean()) / 255.0 for p in images]


@pytest.fixture
def fake_baselines(monkeypatch):
    calls = []

    real_load = imagereward.load

    def load(name="ImageReward-v1.0", device=None, download_root=None, **kwargs):
        if name not in ("CLIP", "BLIP", "Aesthetic"):
            return real_load(name, device, download_root, **kwargs)
        calls.append((name, kwargs))
        return BrightnessScorer()

    real_locate = imagereward.factory.locate

    def locate(name, files=None, download_root=None):
        return {} if name in ("CLIP", "BLIP", "Aesthetic") else real_locate(name, files, download_root)

    monkeypatch.setattr(imagereward, "load", load)
    monkeypatch.setattr(imagereward.factory, "locate", locate)
    return calls



def eval_argv(root, out, *extra):
    return ["eval", "--data", root / "test.json", "--images", root / "images",
            "--output-dir", out, "--no-progress", "--bootstrap", "200", *extra]


# -- data --------------------------------------------------------------------------------


def test_load_test_json_real_file():
    items = load_test_json(str(TEST_JSON))
    assert len(items) == 466
    assert items[0].id == "005658-0040" and items[0].ranking == [1, 2, 5, 3]
    assert sum(len(item.generations) for item in items) == 2720


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ('{"a": 1}', "expected a list"),
        ('[{"prompt": "p", "generations": ["a.png"], "ranking": [1, 2]}]', "item 0: 1 generations but 2 ranks"),
        ('[{"prompt": 3, "generations": [], "ranking": []}]', "'prompt' must be a string"),
        ('[{"prompt": "p", "generations": ["a"], "ranking": ["1"]}]', "list of numbers"),
    ],
)
def test_load_test_json_errors_name_the_file_and_item(tmp_path, content, message):
    path = tmp_path / "test.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_test_json(str(path))
    assert str(path) in str(info.value)


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members:
            if isinstance(data, zipfile.ZipInfo):
                bundle.writestr(data, name)
            else:
                bundle.writestr(name, data)
    return path


def symlink_member(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_safe_extract(tmp_path):
    good = make_zip(tmp_path / "good.zip", [("a/b.txt", b"1"), ("./c.txt", b"2"), ("d/", b"")])
    written = safe_extract(str(good), str(tmp_path / "out"))
    assert sorted(os.path.relpath(p, tmp_path / "out") for p in written) == ["a/b.txt", "c.txt"]
    assert (tmp_path / "out" / "d").is_dir()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("../evil.txt", b"x", "'..'"),
        ("ok/../../evil.txt", b"x", "'..'"),
        ("..\\evil.txt", b"x", "'..'"),
        ("/tmp/evil.txt", b"x", "absolute"),
        ("C:/evil.txt", b"x", "absolute"),
        ("link", None, "symbolic link"),
    ],
)
def test_safe_extract_refuses_escapes(tmp_path, name, data, message):
    member = symlink_member(name) if data is None else data
    archive = make_zip(tmp_path / "bad.zip", [("fine.txt", b"ok"), (name if data else "/etc/passwd", member)])
    if data is None:  # the link's target is its content
        archive = make_zip(tmp_path / "bad.zip", [("fine.txt", b"ok"), ("/etc/passwd", symlink_member(name))])
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(str(archive), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


# -- eval end to end ---------------------------------------------------------------------


def test_eval_end_to_end(capsys, tiny_model, subset, fake_baselines, tmp_path, monkeypatch):
    root, items = subset
    out = tmp_path / "results"
    code, table, err = run(
        capsys, *eval_argv(root, out, "--models", "ImageReward-v1.0,CLIP", "--checkpoint", tiny_model)
    )
    assert code == 0, err
    assert [name for name, _ in fake_baselines] == ["CLIP"]
    assert fake_baselines[0][1]["files"] == {}  # --checkpoint is ImageReward's

    rankings = [item["ranking"] for item in items]
    expected_pairs = preference_accuracy(rankings, [[0.0] * len(r) for r in rankings], n_bootstrap=0).pairs
    summary = json.loads((out / "accuracy.json").read_text())
    assert summary["official_test_set"] is False
    for model in ("ImageReward-v1.0", "CLIP"):
        predictions = json.loads((out / f"test_{model}.json").read_text(encoding="utf-8"))
        assert [p["id"] for p in predictions] == [item["id"] for item in items]
        assert [p["prompt"] for p in predictions] == [item["prompt"] for item in items]
        for p, item in zip(predictions, items):
            assert len(p["rewards"]) == len(item["generations"])
            assert sorted(p["ranking"]) == list(range(1, len(p["rewards"]) + 1))
            best = p["ranking"].index(1)
            assert p["rewards"][best] == max(p["rewards"])
        result = preference_accuracy(rankings, [p["rewards"] for p in predictions], n_bootstrap=0)
        numbers = summary["models"][model]
        assert numbers["pairs"] == expected_pairs == result.pairs
        assert numbers["accuracy"] == pytest.approx(result.accuracy)
        assert numbers["ci_low"] <= numbers["accuracy"] <= numbers["ci_high"]
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} "))
        assert f"{100 * result.accuracy:.2f}" in row and f" {expected_pairs} " in row
    assert table.splitlines()[0].startswith("| Model") and "Paper" not in table
    markdown = (out / "report.md").read_text()
    assert table.strip() in markdown and "report.png" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --reuse recomputes the table from the prediction files without loading any model
    monkeypatch.setattr(imagereward, "load", None)
    monkeypatch.setattr(imagereward, "load_score", None)
    code, again, _ = run(capsys, *eval_argv(root, out, "--models", "ImageReward-v1.0,CLIP", "--reuse",
                                            "--checkpoint", tiny_model))
    assert code == 0 and again == table


def test_eval_input_errors(capsys, subset, tmp_path):
    root, items = subset
    code, _, err = run(capsys, "eval", "--data", tmp_path / "nope.json", "--output-dir", tmp_path)
    assert code == EXIT_INPUT and "--download" in err and "nope.json" in err
    images = tmp_path / "images"
    write_images(images, [g for item in items for g in item["generations"]][1:])
    code, _, err = run(
        capsys, "eval", "--data", root / "test.json", "--images", images, "--output-dir", tmp_path,
        "--models", "CLIP",
    )
    assert code == EXIT_INPUT and "1 of" in err and items[0]["generations"][0] in err
    code, _, err = run(capsys, *eval_argv(root, tmp_path, "--models", "CLIP", "--checkpoint", "x.pt"))
    assert code == 2 and "--checkpoint" in err


def test_eval_without_matplotlib(capsys, subset, tmp_path, monkeypatch, fake_baselines):
    """A plain install has no matplotlib: only the PNG is skipped, with a one-line note."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not report.can_plot()
    root, _ = subset
    code, out, err = run(capsys, *eval_argv(root, tmp_path, "--models", "CLIP"))
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "report.png is skipped" in notes[0]
    assert "| CLIP" in out  # the printed table
    assert (tmp_path / "accuracy.json").is_file() and (tmp_path / "report.md").is_file()
    assert (tmp_path / "test_CLIP.json").is_file() and not (tmp_path / "report.png").exists()
    assert "report.png" not in (tmp_path / "report.md").read_text()


def test_eval_download(capsys, tiny_model, subset, tmp_path, monkeypatch):
    """--download: annotations from a pinned URL (checksummed), images from a hub zip."""
    root, items = subset
    items = items[:5]
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps(items, indent=4), encoding="utf-8")
    digest = hashlib.sha256(remote.read_bytes()).hexdigest()
    monkeypatch.setattr(eval_data, "TEST_JSON_URL", remote.as_uri())
    monkeypatch.setattr(eval_data, "TEST_JSON_SHA256", digest)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with zipfile.ZipFile(data_dir / "test_images.zip", "w") as bundle:  # as if already fetched
        for item in items:
            for g in item["generations"]:
                bundle.write(root / "images" / g, f"test_images/{g}")
    argv = ["eval", "--download", "--data", data_dir / "test.json", "--images", data_dir / "test_images",
            "--models", "ImageReward-v1.0", "--checkpoint", tiny_model, "--output-dir", tmp_path / "out",
            "--no-progress", "--no-plot"]

    code, _, err = run(capsys, *argv)  # offline: the URL is not fetched
    assert code == EXIT_FAILURE and "offline" in err and "test.json" in err
    monkeypatch.delenv("IMAGEREWARD_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    code, table, err = run(capsys, *argv)
    assert code == 0, err
    assert hashlib.sha256((data_dir / "test.json").read_bytes()).hexdigest() == digest
    assert (data_dir / "test_images" / items[0]["generations"][0]).is_file()
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".test_images")] == []
    assert "ImageReward-v1.0" in table and not (tmp_path / "out" / "report.png").exists()

    monkeypatch.setattr(eval_data, "TEST_JSON_SHA256", "0" * 64)
    (data_dir / "test.json").unlink()
    code, _, err = run(capsys, *argv)
    assert code == EXIT_FAILURE and "does not match" in err
    assert not (data_dir / "test.json").exists()


def test_pinned_checksum_is_the_reference_file():
    digest = hashlib.sha256(TEST_JSON.read_bytes()).hexdigest()
    assert digest == eval_data.TEST_JSON_SHA256
    assert "/THUDM/ImageReward/" in eval_data.TEST_JSON_URL


# -- benchmark ---------------------------------------------------------------------------


def test_benchmark_end_to_end(capsys, tiny_model, fake_baselines, tmp_path):
    prompts = json.loads((REFERENCE_DATA / "benchmark-prompts.json").read_text())[:4]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    models = ["openjourney", "sd1-4", "cogview2"]
    for index, model in enumerate(models):
        names = [f"{model}/{p['id']}_{k}.png" for p in prompts for k in range(2)]
        write_images(tmp_path / "gens", names, seed=index)
    out = tmp_path / "results"
    argv = ["benchmark", "--prompts", tmp_path / "prompts.json", "--images", tmp_path / "gens",
            "--models", "all", "--metrics", "ImageReward-v1.0,CLIP", "--checkpoint", tiny_model,
            "--output-dir", out, "--no-progress"]
    code, table, err = run(capsys, *argv)
    assert code == 0, err
    for metric in ("ImageReward-v1.0", "CLIP"):
        scores = json.loads((out / f"{metric}-benchmark-results.json").read_text())
        assert sorted(scores) == sorted(models)
        records = json.loads((out / metric / f"{metric}-benchmark-openjourney-result.json").read_text())
        assert [r["id"] for r in records] == [p["id"] for p in prompts]
        assert all(len(r["rewards"]) == 2 for r in records)
        mean = sum(r["mean_score"] for r in records) / len(records)
        assert scores["openjourney"] == pytest.approx(mean)
    summary = json.loads((out / "benchmark.json").read_text())
    assert set(summary["spearman"]) == {"ImageReward-v1.0", "CLIP"}
    assert table.splitlines()[-1].startswith("| Spearman ρ")
    assert (out / "report.png").is_file() and table.strip() in (out / "report.md").read_text()

    code, _, err = run(capsys, *argv[:5], "--models", "openjourney,dalle2", *argv[7:])
    assert code == EXIT_INPUT and "dalle2" in err

    reused, _, _ = run(capsys, *argv, "--reuse")  # the table again, from the result files
    assert reused == 0
    empty = tmp_path / "empty"
    code, _, err = run(capsys, *argv[:-3], "--output-dir", empty, "--no-progress", "--reuse")
    assert code == EXIT_INPUT and "missing" in err and "sd1-4" in err  # lists, never loads or downloads
    assert not empty.exists() or not any(empty.rglob("*.json"))


def test_eval_without_bootstrap_has_no_interval(capsys, subset, tmp_path, fake_baselines):
    root, _ = subset
    argv = [a for a in eval_argv(root, tmp_path, "--models", "CLIP") if a not in ("--bootstrap", "200")]
    code, table, err = run(capsys, *argv, "--bootstrap", "0")
    assert code == 0, err
    assert "CI" not in table and "–" not in table.splitlines()[2]
    numbers = json.loads((tmp_path / "accuracy.json").read_text())["models"]["CLIP"]
    assert numbers["ci_low"] is None and numbers["ci_high"] is None
    assert "bootstrap" not in (tmp_path / "report.md").read_text()


def test_eval_reuse_lists_missing_predictions(capsys, subset, tmp_path, monkeypatch):
    root, _ = subset
    monkeypatch.setattr(imagereward, "load", None)  # --reuse never loads a model
    monkeypatch.setattr(imagereward, "load_score", None)
    (tmp_path / "test_CLIP.json").write_text("[]")
    code, _, err = run(capsys, *eval_argv(root, tmp_path, "--models", "CLIP,BLIP,Aesthetic", "--reuse"))
    assert code == EXIT_INPUT
    line = err.strip().splitlines()[-1]
    assert str(tmp_path / "test_BLIP.json") in line and str(tmp_path / "test_Aesthetic.json") in line
    assert "test_CLIP.json" not in line


def test_eval_finds_every_models_files_before_scoring_the_first(capsys, subset, tiny_model, tmp_path):
    root, _ = subset
    out = tmp_path / "results"
    code, _, err = run(capsys, *eval_argv(root, out, "--models", "ImageReward-v1.0,CLIP", "--checkpoint",
                                           tiny_model, "--download-root", tmp_path / "empty"))
    assert code == EXIT_FAILURE and "ViT-L-14.pt" in err and "--checkpoint CLIP=PATH" in err
    assert not (out / "test_ImageReward-v1.0.json").exists()  # nothing was scored first


def test_eval_checkpoint_by_model_name(capsys, subset, tmp_path, fake_baselines):
    root, _ = subset
    clip = tmp_path / "ViT-L-14.pt"
    clip.write_bytes(b"x")
    code, table, err = run(capsys, *eval_argv(root, tmp_path / "out", "--models", "CLIP,Aesthetic",
                                              "--checkpoint", f"CLIP={clip}"))
    assert code == 0, err
    assert [(name, kwargs["files"]) for name, kwargs in fake_baselines] == [
        ("CLIP", {"weights": str(clip)}),
        ("Aesthetic", {"clip": str(clip)}),  # CLIP=PATH is also Aesthetic's image encoder
    ]
    assert f"| CLIP ({clip}) " in table


def test_eval_with_int8_says_so_in_its_table(capsys, tiny_model, subset, tmp_path):
    """An int8 run is labelled [int8] in the table and report (its accuracy is not the model's exact one)."""
    from imagereward.int8 import calibrate

    root, items = subset
    images = [str(root / "images" / g) for g in items[0]["generations"]]
    calibration = tmp_path / "int8.json"
    calibrate(imagereward.load(str(tiny_model)), [items[0]["prompt"]] * len(images), images).save(str(calibration))
    out = tmp_path / "results"
    code, table, err = run(capsys, *eval_argv(root, out, "--models", "ImageReward-v1.0", "--checkpoint", tiny_model,
                                              "--int8", calibration, "--no-plot"))
    assert code == 0, err
    row = next(line for line in table.splitlines() if line.startswith("| ImageReward-v1.0"))
    assert "[int8]" in row and "[int8]" in (out / "report.md").read_text()
