"""Small things a first-time user of the command line runs into: progress, long prompts,
local files for every model, and labels that say which model scored."""

from __future__ import annotations

import io
import json
import sys

import pytest

import imagereward
from helpers import ASSETS, BERT_VOCAB, run_cli as run
from imagereward import cli

ASSET_PATHS = [str(p) for p in ASSETS]



class Terminal(io.StringIO):
    """stderr as if it were a terminal."""

    def isatty(self):
        return True



@pytest.mark.parametrize(
    "terminal, extra, shown",
    [(True, [], "bar"), (True, ["--no-progress"], None), (False, [], "lines"), (False, ["--quiet"], None)],
    ids=["terminal", "no-progress", "not-a-terminal", "quiet"],
)
def test_progress_for_more_images_than_a_batch(monkeypatch, capsys, tiny_model, terminal, extra, shown):
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    images = ASSET_PATHS * 3  # 12 images, batches of 2
    code = cli.main(["score", "--checkpoint", tiny_model, "-p", "x", "--batch-size", "2", *images, *extra])
    capsys.readouterr()
    assert code == 0
    text = stderr.getvalue()
    if shown == "bar":
        assert "scoring:" in text and "/12 " in text
    elif shown == "lines":  # a redirected stderr gets plain lines, never redrawn bars
        assert "scoring: 12/12 images (100%)" in text and "\r" not in text
    else:
        assert "scoring" not in text


def test_no_progress_bar_for_one_batch(monkeypatch, capsys, tiny_model):
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert cli.main(["score", "--checkpoint", tiny_model, "-p", "x", *ASSET_PATHS]) == 0
    assert "scoring" not in stderr.getvalue()


def test_long_prompts_are_shortened_in_table_headers_only(capsys, tiny_model):
    prompt = "a very detailed painting of " + "an ocean with clouds and birds, " * 10
    code, table, _ = run(capsys, "rank", "--checkpoint", tiny_model, "-p", prompt, *ASSET_PATHS)
    header = table.splitlines()[0]
    assert code == 0 and header.endswith("…") and len(header.split(" | prompt: ")[1]) == 80
    code, out, _ = run(capsys, "rank", "--checkpoint", tiny_model, "-p", prompt, *ASSET_PATHS, "--json")
    assert {r["prompt"] for r in json.loads(out)} == {prompt}
    code, out, _ = run(capsys, "score", "--checkpoint", tiny_model, "-p", prompt, ASSET_PATHS[0], "--csv")
    assert prompt.strip() in out


@pytest.fixture
def loads(monkeypatch):
    """Records how the command loads each model (no weights needed)."""
    calls = []

    class Fake:
        from imagereward.items import DEFAULT_LIMITS as limits
        from imagereward.preprocess import ImagePreprocessor

        preprocess = ImagePreprocessor()
        num_workers = 0

        def score_pixel_matrix(self, prompts, pixels):
            import torch

            return torch.zeros(len(prompts), len(pixels))

    def load(name, **kwargs):
        calls.append((name, kwargs["files"], kwargs))
        return Fake()

    monkeypatch.setattr(imagereward, "load", load)
    return calls


def test_checkpoint_by_name_and_vocab_file(capsys, tmp_path, loads):
    clip, aesthetic = tmp_path / "ViT-L-14.pt", tmp_path / "aesthetic.pth"
    clip.write_bytes(b"x")
    aesthetic.write_bytes(b"x")
    image = ASSET_PATHS[0]
    assert run(capsys, "score", "-m", "clip", "--checkpoint", f"CLIP={clip}", "-p", "x", image)[0] == 0
    assert run(capsys, "score", "-m", "Aesthetic", "--checkpoint", f"aesthetic={aesthetic}",
               "--checkpoint", f"CLIP={clip}", "-p", "x", image)[0] == 0
    assert run(capsys, "score", "--checkpoint", str(aesthetic), "--vocab-file", BERT_VOCAB, "-p", "x", image)[0] == 0
    assert loads[0][:2] == ("CLIP", {"weights": str(clip)})
    assert loads[1][:2] == ("Aesthetic", {"weights": str(aesthetic), "clip": str(clip)})
    assert loads[2][:2] == ("ImageReward-v1.0", {"weights": str(aesthetic)})
    assert loads[2][2]["vocab_file"] == str(BERT_VOCAB)
    code, _, err = run(capsys, "score", "-m", "CLIP", "--checkpoint", f"BLIP={clip}", "-p", "x", image)
    assert code == 2 and "--checkpoint is for BLIP" in err


def test_custom_model_is_labelled_with_its_path(capsys, tiny_model):
    code, table, _ = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", ASSET_PATHS[0])
    assert code == 0 and table.splitlines()[0] == f"ImageReward-v1.0 ({tiny_model}) | prompt: x"
