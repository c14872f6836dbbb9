"""MPS and HPSv3: what their own code paths promise, beyond the parity with the originals.

- MPS's released checkpoint is a whole pickled model: its tensors are read without
  importing or running any class the file names (and a file that tries to run code
  runs nothing); a plain state dict and safetensors of the same keys give the same scores.
- MPS's condition decides which prompt tokens the image attends to: another condition
  gives other scores, and the default is the released "overall" one.
- HPSv3 gives the mean and the uncertainty; images of other sizes share a batch (the
  native chain pads them with NaN) with the scores they get alone; prompts that would
  break its chat turn, and images its chain refuses, are refused naming them.
- Both are differentiable from the pixels; HPSv3 needs only the [vlm] extra, and without
  transformers it says so.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import imagereward
from helpers import CLIP_BPE
from imagereward.config import MPS_OVERALL_CONDITION
from imagereward.errors import CheckpointError, ExtraMissingError, ImageLoadError, PromptError
from imagereward.module_pickle import read_module_tensors
from imagereward.tokenizers.clip_bpe import BPE_ENV
from newmodel_files import TINY_MPS, mps_state, write_hpsv3, write_mps
from test_eval import subset  # noqa: F401  (a fixture)

pytest.importorskip("transformers")

PROMPTS = ["a red bicycle on a hill", "", "un café à Zürich, 東京の夜景 🌊", "a cat"]


@pytest.fixture(autouse=True)
def _bpe(monkeypatch):
    monkeypatch.setenv(BPE_ENV, str(CLIP_BPE))


def _images(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate([(64, 48), (40, 90), (300, 200), (33, 33)]):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def mps(tmp_path_factory):
    root = tmp_path_factory.mktemp("mps")
    files, options = write_mps(root)
    return root, files, options


@pytest.fixture(scope="module")
def hpsv3(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpsv3")
    files, _ = write_hpsv3(root)
    return root, files, imagereward.load("HPSv3", files=files, device="cpu", num_workers=0, batch_size=4)


# -- MPS ----------------------------------------------------------------------------------------
def _whole_model_pickle(root: Path, state: dict) -> Path:
    """A model saved whole, as MPS's file is: classes of a package (named like MPS's) that is
    importable while saving and gone when reading."""
    package = root / "pkg" / "trainer" / "models"
    package.mkdir(parents=True)
    (root / "pkg" / "trainer" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "clip_model.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Holder(nn.Module):
            def __init__(self, tensors):
                super().__init__()
                for name, value in tensors.items():
                    self.register_buffer(name, value)

        class CLIPModel(nn.Module):
            '''Stands for MPS's class: a tree of modules holding the checkpoint's tensors.'''
            def __init__(self, state):
                super().__init__()
                self.model = nn.Module()
                self.cross_model = nn.Module()
                for key, value in state.items():
                    top, rest = key.split(".", 1)
                    module = getattr(self, top)
                    *path, leaf = rest.split(".")
                    for part in path:
                        if part not in module._modules:
                            module.add_module(part, nn.Module())
                        module = module._modules[part]
                    module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
                self.register_buffer("scratch", torch.zeros(3), persistent=False)

            def __setstate__(self, state):
                raise RuntimeError("reading the checkpoint ran the model's code")
    """))
    out = root / "MPS_overall_checkpoint.pth"
    script = (f"import sys, torch; sys.path.insert(0, {str(root / 'pkg')!r}); "
              "from trainer.models.clip_model import CLIPModel; "
              f"torch.save(CLIPModel(torch.load({str(root / 'state.pt')!r})).half(), {str(out)!r})")
    torch.save(state, root / "state.pt")
    subprocess.run([sys.executable, "-c", script], check=True)
    return out


def test_mps_whole_model_pickle_is_read_without_running_it(mps, tmp_path):
    state = mps_state(12)
    path = _whole_model_pickle(tmp_path, state)
    assert "trainer" not in sys.modules
    tensors = read_module_tensors(str(path))
    assert "trainer" not in sys.modules  # nothing of the file's package was imported
    assert sorted(tensors) == sorted(state)  # the non-persistent buffer is not a weight
    assert all(torch.equal(tensors[k].float(), state[k].half().float()) for k in state)
    model = imagereward.load("MPS", checkpoint=str(path), device="cpu", config=TINY_MPS, num_workers=0)
    reference = imagereward.load("MPS", files=mps[1], device="cpu", config=TINY_MPS, num_workers=0)
    paths = _images(tmp_path / "images")
    assert model.score_batch(PROMPTS, paths) == pytest.approx(
        imagereward.load("MPS", checkpoint=str(_as_half_state(state, tmp_path)), device="cpu",
                         config=TINY_MPS, num_workers=0).score_batch(PROMPTS, paths), abs=1e-5)
    assert reference.score_batch(PROMPTS, paths) != pytest.approx(model.score_batch(PROMPTS, paths), abs=1e-9)


def _as_half_state(state: dict, root: Path) -> Path:
    path = root / "half.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    return path


def test_a_pickle_that_runs_code_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    torch.save({"weight": torch.ones(2), "payload": Payload()}, tmp_path / "evil.pth")
    assert list(read_module_tensors(str(tmp_path / "evil.pth"))) == ["weight"]
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not an MPS checkpoint|does not fit"):
        imagereward.load("MPS", checkpoint=str(tmp_path / "evil.pth"), device="cpu", config=TINY_MPS)


def test_mps_state_dict_and_safetensors_agree(mps, tmp_path):
    root, files, options = mps
    paths = _images(tmp_path / "images")
    from_pth = imagereward.load("MPS", files=files, device="cpu", num_workers=0, **options)
    path = tmp_path / "mps.safetensors"
    save_file({k: v.contiguous() for k, v in mps_state(12).items()}, str(path))
    from_safetensors = imagereward.load("MPS", checkpoint=str(path), device="cpu", num_workers=0, **options)
    expected = from_pth.score_batch(PROMPTS, paths)
    assert from_safetensors.score_batch(PROMPTS, paths) == expected
    matrix = from_pth.score_matrix(PROMPTS, paths)
    assert torch.allclose(torch.diagonal(matrix), torch.tensor(expected), atol=1e-4)


def test_mps_condition_selects_prompt_tokens(mps, tmp_path):
    root, files, options = mps
    paths = _images(tmp_path / "images")
    overall = imagereward.load("MPS", files=files, device="cpu", num_workers=0, **options)
    assert overall.config.condition == MPS_OVERALL_CONDITION
    text = overall.text_rows(PROMPTS[:1])
    kept = torch.isfinite(text["mask"]).sum().item()
    assert 0 < kept < text["mask"].numel()  # the condition keeps some prompt tokens, not all
    other = imagereward.load("MPS", files=files, device="cpu", num_workers=0,
                             config=dataclasses.replace(TINY_MPS, condition="hands, faces"))
    assert not torch.equal(other.text_rows(PROMPTS[:1])["mask"], text["mask"])
    assert other.score_batch(PROMPTS, paths) != pytest.approx(overall.score_batch(PROMPTS, paths), abs=1e-6)


def test_mps_gradients_reach_the_pixels(mps):
    root, files, options = mps
    model = imagereward.load("MPS", files=files, device="cpu", num_workers=0, **options)
    pixels = torch.rand(2, 3, 50, 70, requires_grad=True)
    model.score_tensors(pixels, ["a cat", "a dog"]).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


# -- HPSv3 --------------------------------------------------------------------------------------
def test_hpsv3_mean_and_uncertainty(hpsv3, tmp_path):
    _, _, model = hpsv3
    paths = _images(tmp_path / "images")
    details = model.score_details(PROMPTS, paths)
    assert details["mean"] == model.score_batch(PROMPTS, paths)
    assert len(details["sigma"]) == len(paths) and all(s > 0 for s in details["sigma"])
    assert model.score(PROMPTS[0], paths[0]) == pytest.approx(details["mean"][0], abs=1e-6)


def test_hpsv3_images_of_other_sizes_share_a_batch(hpsv3, tmp_path):
    _, _, model = hpsv3
    paths = _images(tmp_path / "images")
    sizes = {tuple(imagereward.items.decode(model.preprocess, p).shape) for p in paths}
    assert len(sizes) > 1  # the native chain keeps aspect ratios
    together = model.score_batch(PROMPTS, paths)
    alone = [model.score_batch([p], [i])[0] for p, i in zip(PROMPTS, paths)]
    assert together == pytest.approx(alone, abs=1e-5)
    matrix = model.score_matrix(PROMPTS, paths)
    assert torch.allclose(torch.diagonal(matrix), torch.tensor(together), atol=1e-5)


def test_hpsv3_refuses_prompts_that_break_its_turn_and_images_it_cannot_take(hpsv3, tmp_path):
    _, _, model = hpsv3
    paths = _images(tmp_path / "images")
    for prompt in ("a <|Reward|> cat", "an <|image_pad|> here"):
        with pytest.raises(PromptError, match=r"prompts\[1\]"):
            model.score_batch(["fine", prompt], paths[:2])
    Image.new("RGB", (1000, 4)).save(tmp_path / "strip.png")
    with pytest.raises(ImageLoadError, match="strip.png"):
        model.score("a cat", str(tmp_path / "strip.png"))


def test_hpsv3_gradients_reach_the_pixels(hpsv3):
    _, _, model = hpsv3
    pixels = torch.rand(2, 3, 100, 140, requires_grad=True)
    scores = model.score_tensors(pixels, "a red bicycle")
    scores.sum().backward()
    assert scores.shape == (2,) and pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_hpsv3_saved_folder_keeps_its_tokenizer(hpsv3, tmp_path):
    _, files, model = hpsv3
    paths = _images(tmp_path / "images")
    folder = imagereward.save_pretrained(model, str(tmp_path / "saved"))
    assert (Path(folder) / "tokenizer.json").is_file()
    loaded = imagereward.load(folder, device="cpu", num_workers=0, batch_size=4)
    assert loaded.score_batch(PROMPTS, paths) == pytest.approx(model.score_batch(PROMPTS, paths), abs=1e-6)


def test_hpsv3_without_transformers_says_which_extra(hpsv3, monkeypatch):
    _, files, _ = hpsv3
    monkeypatch.setitem(sys.modules, "transformers.models.qwen2_vl", None)
    with pytest.raises(ExtraMissingError, match=r"imagereward\[vlm\]"):
        imagereward.load("HPSv3", files=files, device="cpu")


# -- the commands that compare models -----------------------------------------------------------
def test_eval_and_benchmark_take_mps_and_hpsv3(capsys, subset, mps, hpsv3, tmp_path):  # noqa: F811
    from helpers import REFERENCE_DATA, run_cli
    from test_eval import eval_argv, write_images

    root, _ = subset
    mps_model = imagereward.load("MPS", files=mps[1], device="cpu", num_workers=0, **mps[2])
    mps_folder = imagereward.save_pretrained(mps_model, str(tmp_path / "mps"))
    hps_files = hpsv3[1]
    checkpoints = ["--checkpoint", f"MPS={mps_folder}", "--checkpoint", f"HPSv3={hps_files['weights']}",
                   "--checkpoint", f"HPSv3:tokenizer={hps_files['tokenizer']}"]
    code, table, err = run_cli(capsys, *eval_argv(root, tmp_path / "out", "--models", "MPS,HPSv3", *checkpoints))
    assert code == 0, err
    assert "| MPS (" in table and "| HPSv3 (" in table
    prompts = json.loads((REFERENCE_DATA / "benchmark-prompts.json").read_text())[:2]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    for index, generator in enumerate(("sd1-4", "openjourney")):
        write_images(tmp_path / "gens", [f"{generator}/{p['id']}_{k}.png" for p in prompts for k in range(2)], index)
    code, table, err = run_cli(capsys, "benchmark", "--prompts", tmp_path / "prompts.json", "--images",
                               tmp_path / "gens", "--models", "all", "--metrics", "MPS,HPSv3",
                               "--output-dir", tmp_path / "bench", "--no-progress", *checkpoints)
    assert code == 0, err
    for metric in ("MPS", "HPSv3"):
        assert sorted(json.loads((tmp_path / "bench" / f"{metric}-benchmark-results.json").read_text())) == [
            "openjourney", "sd1-4"]
