"""Bad inputs on the command line: the documented exit code and a message naming the input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat

import pytest
import torch

from helpers import ASSETS, BERT_VOCAB, run_cli as run
from imagereward.cli.common import EXIT_INPUT, EXIT_USAGE

IMAGE = str(ASSETS[0])




def last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[-1]


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _text(path):
    path.write_text("hello, I am not a checkpoint\n")


def _missing_key(state):
    del state["mlp.layers.0.weight"]


def _wrong_shape(state):
    state["mlp.layers.0.weight"] = torch.zeros(3, 3)


@pytest.mark.parametrize("write", [_random_bytes, _text], ids=["random-bytes", "text"])
def test_file_that_is_no_checkpoint_exits_3(capsys, tmp_path, write):
    path = tmp_path / "ImageReward.pt"
    write(path)
    code, _, err = run(capsys, "score", "--offline", "--checkpoint", path, "-p", "x", IMAGE)
    line = last_line(err)
    assert code == EXIT_INPUT, err
    assert f"{path} is not a checkpoint" in line
    assert "weights_only" not in err  # never the advice to load with weights_only=False


@pytest.mark.parametrize(
    "change, message",
    [(_missing_key, "missing keys: mlp.layers.0.weight"), (_wrong_shape, "shape mismatches: mlp.layers.0.weight")],
    ids=["missing-key", "wrong-shape"],
)
def test_checkpoint_that_does_not_fit_exits_3(capsys, tmp_path, tiny_model, change, message):
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, tmp_path / "model")
    path = tmp_path / "model" / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))
    code, _, err = run(capsys, "score", "--offline", "--checkpoint", path.parent, "-p", "x", IMAGE)
    line = last_line(err)
    assert code == EXIT_INPUT, err
    assert str(path) in line and message in line
    assert "weights_only" not in err  # never the advice to load with weights_only=False


def test_random_file_is_not_a_checkpoint_in_the_library(tmp_path):
    import imagereward

    path = tmp_path / "random.pt"
    _random_bytes(path)
    with pytest.raises(imagereward.CheckpointError) as error:
        imagereward.load(str(path), device="cpu")
    assert str(error.value).startswith(f"{path} is not a checkpoint")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # torch's text left out


def test_cuda_on_a_cpu_only_torch(capsys, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "--device", "cuda", "-p", "x", IMAGE)
    assert code == EXIT_INPUT
    assert "CUDA is not available" in last_line(err) and "AssertionError" not in err


def test_gzip_vocabulary_names_the_file(capsys, tmp_path, tiny_model):
    vocab = tmp_path / "vocab.txt.gz"
    vocab.write_bytes(gzip.compress(BERT_VOCAB.read_bytes()))
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "--vocab-file", vocab, "-p", "x", IMAGE)
    line = last_line(err)
    assert code == EXIT_INPUT
    assert str(vocab) in line and "gzip" in line and "codec" not in line


def test_folder_given_as_image(capsys, tmp_path, tiny_model):
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", tmp_path)
    assert code == EXIT_INPUT
    assert last_line(err).endswith(f"image path is a folder, not a file: {tmp_path}")


# -- train ---------------------------------------------------------------------------------


def test_train_usage_error_exits_2(capsys, tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[]")
    code, _, err = run(capsys, "train", "--train-data", data, "--init", "scratch",
                       "--pairs-per-step", "6", "--batch-size", "4", "--output-dir", tmp_path / "out")
    assert code == EXIT_USAGE
    assert "pairs_per_step 6 is not a multiple of batch_size 4" in err
    assert not (tmp_path / "out").exists()


def test_train_has_verbose(capsys, tmp_path):
    from test_train_synthetic import write_model_config

    argv = ["train", "--train-data", tmp_path / "missing.json", "--init", "scratch", "--no-plot",
            "--model-config", write_model_config(tmp_path / "model.json"), "--output-dir", tmp_path / "out"]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_INPUT and str(tmp_path / "missing.json") in last_line(err)
    code, _, err = run(capsys, *argv, "--verbose")  # the option its errors point to exists
    assert code == EXIT_INPUT and "Traceback" in err


def test_train_help_says_each_default_once(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    options = out.split("\n  --")[1:]
    assert len(options) > 30
    for option in options:
        assert option.count("default") <= 1, option
    assert "--head-init {lecun,original}" in out


# -- files written ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_weights_follow_the_umask(capsys, tmp_path, tiny_model, umask):
    previous = os.umask(umask)
    try:
        code, _, err = run(capsys, "convert", tiny_model, tmp_path / "out")
    finally:
        os.umask(previous)
    assert code == 0, err
    expected = 0o666 & ~umask
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == expected, name


def test_convert_refuses_to_overwrite(capsys, tmp_path, tiny_model):
    out = tmp_path / "out"
    assert run(capsys, "convert", tiny_model, out)[0] == 0
    before = (out / "model.safetensors").stat().st_mtime_ns
    code, _, err = run(capsys, "convert", tiny_model, out)
    assert code == EXIT_USAGE and "--overwrite" in err
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    code, _, err = run(capsys, "convert", tiny_model, out, "--overwrite", "--offline", "--download-root", tmp_path)
    assert code == 0, err  # convert takes --offline and --download-root as every other verb
    assert json.loads((out / "config.json").read_text())["model_type"] == "ImageReward"


def test_offline_hints_name_the_flag_that_works(capsys, tmp_path):
    """Each missing file's hint names the option for that file, and that option is accepted."""
    image = str(ASSETS[0])
    code, _, err = run(capsys, "score", "-m", "Aesthetic", "-p", "x", image, "--download-root", tmp_path)
    assert code == 1
    assert "--checkpoint Aesthetic=PATH" in err and "--checkpoint Aesthetic:clip=PATH" in err
    head = tmp_path / "sac.pth"
    head.write_bytes(b"x")
    code, _, err = run(capsys, "score", "-m", "Aesthetic", "-p", "x", image, "--download-root", tmp_path,
                       "--checkpoint", f"Aesthetic={head}", "--checkpoint", f"Aesthetic:clip={head}")
    assert "given twice" not in err and "Could not get" not in err  # both files taken; they are junk
    assert code == 3 and "not a CLIP checkpoint" in err


def test_unknown_device_is_a_usage_error_before_loading(capsys, monkeypatch):
    import imagereward

    monkeypatch.setattr(imagereward, "load", None)  # never reached
    code, _, err = run(capsys, "score", "--device", "tpu", "-p", "x", str(ASSETS[0]))
    assert code == EXIT_USAGE and "unknown device 'tpu'" in err
    code, _, err = run(capsys, "rank", "--device", "cuda:x", "-p", "x", str(ASSETS[0]))
    assert code == EXIT_USAGE and "unknown device 'cuda:x'" in err


def test_torchscript_clip_archive_as_an_imagereward_checkpoint_says_what_it_is(capsys, tmp_path):
    from test_baselines import write_clip_archive

    archive = write_clip_archive(tmp_path / "ViT-L-14.pt")
    code, _, err = run(capsys, "score", "--checkpoint", archive, "-p", "x", str(ASSETS[0]))
    assert code == 3
    assert "TorchScript archive" in err and "--model CLIP" in err
    assert len(err.strip().splitlines()) == 1 and "Warning" not in err


def test_train_data_in_an_unknown_format_is_an_input_error(capsys, tmp_path):
    from test_train_synthetic import write_model_config

    text = tmp_path / "text.png"
    text.write_text("not rankings")
    code, _, err = run(capsys, "train", "--train-data", text, "--init", "scratch", "--no-plot",
                       "--model-config", write_model_config(tmp_path / "model.json"),
                       "--output-dir", tmp_path / "out")
    assert code == EXIT_INPUT and str(text) in last_line(err) and "ValueError" not in err


def test_download_finds_every_file_of_the_models_named(capsys, tmp_path):
    root = tmp_path / "weights"
    root.mkdir()
    code, _, err = run(capsys, "download", "Aesthetic", "BLIP", "--download-root", root)
    assert code == 1 and "sac+logos+ava1-l14-linearMSE.pth" in err and "ViT-L-14.pt" in err  # offline here
    (root / "model_large.pth").write_bytes(b"weights")  # no sha256 is registered for it
    code, out, _ = run(capsys, "download", "BLIP", "--download-root", root)
    assert code == 0 and out.strip() == f"BLIP\tweights\t{root / 'model_large.pth'}"
    code, out, _ = run(capsys, "download", "nope")
    assert code == 2


def test_quiet_and_log_level(capsys, tiny_model):
    code, out, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", str(ASSETS[0]), "--log-level", "info")
    assert code == 0 and "load checkpoint" in err
    code, out, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", str(ASSETS[0]), "--quiet")
    assert code == 0 and err == "" and "reward" in out


def test_options_that_do_not_fit_an_earlier_run_are_usage_errors():
    from imagereward.cli.common import exit_code_for
    from imagereward.errors import OptionsError

    assert exit_code_for(OptionsError("out/checkpoint.pt exists: pass --resume")) == EXIT_USAGE
