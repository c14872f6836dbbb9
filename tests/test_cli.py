"""The command line: help, output formats, exit codes, and the resumable batch job."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import imagereward
from helpers import ASSETS, run_cli as run
from imagereward import cli
from imagereward.cli.common import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE

ASSET_PATHS = [str(p) for p in ASSETS]




def one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("imagereward")
    return lines[-1]


# -- help and dispatch --------------------------------------------------------------


def test_help_is_fast_and_imports_neither_torch_nor_matplotlib():
    code = textwrap.dedent(
        """
        import sys
        from imagereward.cli import main
        codes = [main([c, "--help"]) for c in ("score", "rank", "eval", "benchmark")]
        codes.append(main(["--help"]))
        assert codes == [0] * 5, codes
        heavy = [m for m in ("torch", "matplotlib", "numpy") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for option in ("--checkpoint", "--offline", "--resume", "--models", "--human-ranking", "exit codes"):
        assert option in result.stdout


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "imagereward", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("score", "rank", "eval", "benchmark"):
        assert command in result.stdout


def test_no_or_unknown_command_is_a_usage_error(capsys):
    assert run(capsys, )[0] == EXIT_USAGE
    assert run(capsys, "frobnicate")[0] == EXIT_USAGE
    code, out, _ = run(capsys, "--version")
    assert code == 0 and imagereward.__version__ in out


def test_external_command_modules_are_registered_lazily(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello_cmd.py").write_text(
        textwrap.dedent(
            """
            def register(subparsers):
                parser = subparsers.add_parser("hello", help="say hello")
                parser.add_argument("--name", default="world")
                parser.set_defaults(func=lambda args: print("hello", args.name) or 0)
            """
        )
    )
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("raise ImportError('not executed')\n")
    (tmp_path / "broken_pkg" / "cli.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        cli, "COMMANDS",
        cli.COMMANDS + (("hello", "hello_cmd", "say hello"), ("gone", "missing_pkg.cli", "absent")),
    )
    assert cli._module_exists("broken_pkg.cli")  # found without running the package
    assert not cli._module_exists("missing_pkg.cli")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "hello" in out and "gone" not in out
    assert "hello_cmd" not in sys.modules
    assert run(capsys, "hello", "--name", "you")[1] == "hello you\n"


# -- single runs -----------------------------------------------------------------------


def test_several_prompts_score_every_image_for_each(capsys, tiny_model):
    import imagereward

    prompts = ["an ocean", "a red car at night"]
    args = ["--checkpoint", tiny_model, "-p", prompts[0], "-p", prompts[1], "-p", prompts[0],
            *ASSET_PATHS]
    code, out, _ = run(capsys, "score", *args, "--json")
    assert code == 0
    records = json.loads(out)
    given = [prompts[0], prompts[1], prompts[0]]  # a repeated --prompt is reported each time given
    assert [(r["prompt"], r["image"]) for r in records] == [(p, i) for p in given for i in ASSET_PATHS]
    assert records[:4] == records[8:]  # and scored once: the very same numbers
    model = imagereward.load(tiny_model, device="cpu")
    for record in records:
        expected = model.score(record["prompt"], record["image"])
        assert record["reward"] == pytest.approx(expected, abs=1e-5)
    code, table, _ = run(capsys, "rank", *args)
    sections = table.split("\n\n")
    assert [s.splitlines()[0] for s in sections] == [
        f"ImageReward-v1.0 ({tiny_model}) | prompt: {p}" for p in given  # a local model shows its path
    ]
    for prompt, section in zip(given, sections):
        rewards = [float(line.split()[1]) for line in section.splitlines()[2:]]
        assert rewards == sorted(rewards, reverse=True) and len(rewards) == 4


def test_score_table_json_csv(capsys, tiny_model):
    base = ["score", "--checkpoint", tiny_model, "--prompt", "an ocean", *ASSET_PATHS]
    code, table, _ = run(capsys, *base)
    assert code == 0
    lines = table.splitlines()
    assert lines[0] == f"ImageReward-v1.0 ({tiny_model}) | prompt: an ocean"
    assert lines[1].split() == ["reward", "image"]
    assert [line.split()[-1] for line in lines[2:]] == ASSET_PATHS
    code, out, _ = run(capsys, *base, "--json")
    records = json.loads(out)
    assert [r["image"] for r in records] == ASSET_PATHS
    assert all(r["prompt"] == "an ocean" and isinstance(r["reward"], float) for r in records)
    assert [line.split()[0] for line in lines[2:]] == [f"{r['reward']:.4f}" for r in records]
    code, out, _ = run(capsys, *base, "--csv")
    assert out.splitlines()[0] == "prompt,image,reward" and len(out.splitlines()) == 5
    assert run(capsys, *base, "--json", "--csv")[0] == EXIT_USAGE


def test_rank_sorts_by_reward(capsys, tiny_model):
    code, out, _ = run(
        capsys, "rank", "--checkpoint", tiny_model, "-p", "an ocean", *ASSET_PATHS, "--json"
    )
    assert code == 0
    records = json.loads(out)
    assert [r["rank"] for r in records] == [1, 2, 3, 4]
    rewards = [r["reward"] for r in records]
    assert rewards == sorted(rewards, reverse=True)
    code, table, _ = run(capsys, "rank", "--checkpoint", tiny_model, "-p", "an ocean", *ASSET_PATHS)
    assert table.splitlines()[1].split() == ["rank", "reward", "image"]
    assert table.splitlines()[2].split()[-1] == records[0]["image"]


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--prompt", "x", "missing.png"], EXIT_INPUT, "image not found: missing.png"),
        (["--prompt", "x", "--checkpoint", "nowhere", ASSET_PATHS[0]], EXIT_INPUT, "checkpoint not found: nowhere"),
        (["--prompt", "x", "--model", "DALL-E", ASSET_PATHS[0]], EXIT_USAGE, "unknown model 'DALL-E'"),
        ([ASSET_PATHS[0]], EXIT_USAGE, "--prompt is required"),
        (["--prompt", "x", "--batch-size", "0", ASSET_PATHS[0]], EXIT_USAGE, "positive integer"),
        (["--prompt", "x", ASSET_PATHS[0]], 1, "Could not get the ImageReward-v1.0 weights"),
    ],
)
def test_errors_are_one_line_with_exit_codes(capsys, argv, code, message):
    result, _, err = run(capsys, "score", "--offline", *argv)
    assert result == code
    assert message in one_line_error(err)


def test_unreadable_image(capsys, tiny_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", str(bad))
    assert code == EXIT_INPUT and str(bad) in one_line_error(err)
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "x", str(bad), "--verbose")
    assert code == EXIT_INPUT and "Traceback" in err


# -- batch jobs ------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path):
    """29 records over 28 small images, one undecodable and one missing, plus a repeat of the first."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(28):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        size = (int(rng.integers(32, 64)), int(rng.integers(32, 64)))
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        records.append({"prompt": f"prompt {index % 3}", "image": f"images/{index}.png", "id": index})
    (tmp_path / "images" / "5.png").write_bytes(b"corrupt")
    records[11]["image"] = "images/absent.png"
    records.append(dict(records[0]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path, pairs


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def batch_argv(tiny_model, root, pairs, output, *extra):
    return ["score", "--checkpoint", tiny_model, "--input", pairs, "--output", output,
            "--image-root", root, "--batch-size", "4", "--no-progress", *extra]


def test_batch_job_records_errors_and_goes_on(capsys, tiny_model, job):
    root, pairs = job
    output = root / "scores.jsonl"
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output))
    assert code == EXIT_PARTIAL
    assert "27 pairs scored, 2 failed, 0 skipped" in err
    records = read_jsonl(output)
    assert [r["id"] for r in records] == [*range(28), 0]  # input order, the repeat scored too
    assert [r["line"] for r in records] == list(range(1, 30))
    assert records[-1]["reward"] == pytest.approx(records[0]["reward"], abs=1e-5)  # other batch, same pair
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {5, 11}
    assert "5.png" in errors[5] and "not found: " in errors[11] and "absent.png" in errors[11]
    # pairs sharing a batch with the bad image still get their exact rewards
    model = imagereward.load(tiny_model, device="cpu")
    expected = model.score_batch([records[4]["prompt"]], [str(root / records[4]["image"])])[0]
    assert records[4]["reward"] == pytest.approx(expected, abs=1e-5)


def test_batch_job_resume_after_interruption(capsys, tiny_model, job, monkeypatch):
    root, pairs = job
    full = root / "full.jsonl"
    assert run(capsys, *batch_argv(tiny_model, root, pairs, full))[0] == EXIT_PARTIAL

    load = imagereward.load

    def interrupted_load(*args, **kwargs):
        model = load(*args, **kwargs)
        score_pixels, calls = model.score_pixels, []

        def flaky(prompts, pixels):  # Ctrl-C during the fifth batch
            calls.append(len(prompts))
            if len(calls) == 5:
                raise KeyboardInterrupt
            return score_pixels(prompts, pixels)

        model.score_pixels = flaky
        return model

    monkeypatch.setattr(imagereward, "load", interrupted_load)
    output = root / "scores.jsonl"
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output))
    assert code == EXIT_INTERRUPTED and "--resume" in one_line_error(err)
    assert len(read_jsonl(output)) == 16  # four batches of four
    monkeypatch.setattr(imagereward, "load", load)

    with open(output, "a", encoding="utf-8") as handle:  # a line cut short by the kill
        handle.write('{"prompt": "prompt 2", "ima')
    assert run(capsys, *batch_argv(tiny_model, root, pairs, output))[0] == EXIT_USAGE  # no --resume
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--resume"))
    assert code == EXIT_PARTIAL and "16 skipped" in err  # the 16 lines already done
    resumed = read_jsonl(output)
    assert [r["line"] for r in resumed] == list(range(1, 30))
    for a, b in zip(resumed, read_jsonl(full)):
        assert ("reward" in a) == ("reward" in b)
        if "reward" in a:
            assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
    # nothing left to do: no model is loaded, errors are still reported
    monkeypatch.setattr(imagereward, "load", None)
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--resume"))
    assert code == EXIT_PARTIAL and "0 pairs scored" in err
    monkeypatch.setattr(imagereward, "load", load)
    code, _, _ = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--overwrite"))
    assert code == EXIT_PARTIAL and len(read_jsonl(output)) == 29


def test_batch_job_retries_its_errors(capsys, tiny_model, job):
    """--retry-errors scores again the pairs whose records are errors and keeps every other line as it was."""
    root, pairs = job
    output = root / "scores.jsonl"
    assert run(capsys, *batch_argv(tiny_model, root, pairs, output))[0] == EXIT_PARTIAL
    before = output.read_text(encoding="utf-8").splitlines(keepends=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(root / "images" / "absent.png")  # the missing image is there now
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--resume"))
    assert code == EXIT_PARTIAL and "0 pairs scored" in err  # a plain resume keeps its errors
    assert output.read_text(encoding="utf-8").splitlines(keepends=True) == before

    os.chmod(output, 0o640)
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--retry-errors"))
    assert code == EXIT_PARTIAL  # 5.png is still corrupt
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o640  # the copy that replaced it keeps its permissions
    assert "1 pairs scored, 1 failed, 27 skipped (already done) (2 error record(s) taken out to retry)" in err
    after = output.read_text(encoding="utf-8").splitlines(keepends=True)
    assert after[:27] == [line for line in before if '"error"' not in line]  # the rest untouched, in order
    records = read_jsonl(output)
    assert sorted(r["line"] for r in records) == list(range(1, 30))  # still one record per input line
    retried = {r["id"]: r for r in records[27:]}
    assert set(retried) == {5, 11} and "error" in retried[5]
    model = imagereward.load(tiny_model, device="cpu")
    expected = model.score_batch([retried[11]["prompt"]], [str(root / "images" / "absent.png")])[0]
    assert retried[11]["reward"] == pytest.approx(expected, abs=1e-5)

    Image.new("RGB", (40, 40), (30, 200, 30)).save(root / "images" / "5.png")
    link = root / "link.jsonl"  # through a symbolic link: the file it points to is rewritten
    link.symlink_to(output)
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, link, "--retry-errors"))
    assert code == 0 and "1 pairs scored, 0 failed, 28 skipped" in err
    assert link.is_symlink()
    assert all("reward" in r for r in read_jsonl(output)) and len(read_jsonl(output)) == 29
    assert not [p for p in os.listdir(root) if ".tmp-" in p]
    assert run(capsys, *batch_argv(tiny_model, root, pairs, output, "--retry-errors", "--overwrite"))[0] == EXIT_USAGE


def test_batch_job_keeps_records_that_repeat_a_pair(capsys, tiny_model, job):
    """Same prompt and image, different ids: each record gets its own line, also on resume."""
    root, _ = job
    pairs = root / "repeats.jsonl"
    rows = [{"id": f"r{i}", "prompt": "prompt 0", "image": "images/0.png"} for i in range(3)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = root / "repeats-out.jsonl"
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output))
    assert code == 0 and "3 pairs scored" in err
    assert [r["id"] for r in read_jsonl(output)] == ["r0", "r1", "r2"]
    with open(output, "r+", encoding="utf-8") as handle:  # lose the last result
        kept = handle.readlines()[:2]
        handle.seek(0)
        handle.writelines(kept)
        handle.truncate()
    code, _, err = run(capsys, *batch_argv(tiny_model, root, pairs, output, "--resume"))
    assert code == 0 and "1 pairs scored" in err and "2 skipped" in err
    assert [r["id"] for r in read_jsonl(output)] == ["r0", "r1", "r2"]


def test_batch_job_input_errors(capsys, tiny_model, tmp_path):
    output = tmp_path / "out.jsonl"
    code, _, err = run(capsys, *batch_argv(tiny_model, tmp_path, tmp_path / "nope.jsonl", output))
    assert code == EXIT_INPUT and "input file not found" in one_line_error(err)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "image": "x.png"}\n{"prompt": "b"}\n')
    code, _, err = run(capsys, *batch_argv(tiny_model, tmp_path, bad, output))
    assert code == EXIT_INPUT and "line 2" in one_line_error(err)
    code, _, err = run(capsys, "score", "--input", bad, "--prompt", "x")
    assert code == EXIT_USAGE
    assert not os.path.exists(output)


def test_skip_errors_scores_the_readable_images_and_names_the_others(capsys, tiny_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    missing = tmp_path / "missing.png"
    images = [str(ASSETS[0]), str(bad), str(ASSETS[1]), str(missing)]
    code, _, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "a cat", *images)
    assert code == EXIT_INPUT and str(missing) in one_line_error(err)
    code, out, err = run(capsys, "score", "--checkpoint", tiny_model, "-p", "a cat", "--json",
                         "--skip-errors", *images)
    assert code == EXIT_PARTIAL
    records = json.loads(out)
    assert [r["image"] for r in records] == [str(ASSETS[0]), str(ASSETS[1])]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and str(bad) in lines[0] and str(missing) in lines[1]
    model = imagereward.load(tiny_model, device="cpu")
    assert [r["reward"] for r in records] == pytest.approx(model.score("a cat", [str(ASSETS[0]), str(ASSETS[1])]),
                                                          abs=1e-5)
    code, out, _ = run(capsys, "rank", "--checkpoint", tiny_model, "-p", "a cat", "--json", "--skip-errors", *images)
    assert code == EXIT_PARTIAL and sorted(r["rank"] for r in json.loads(out)) == [1, 2]


def test_log_messages_go_to_stderr_as_it_is_when_logged(capsys, monkeypatch):
    """main() run twice in one process (tests, notebooks): the second run's messages reach
    the stderr of that moment, not a stream replaced since the first run."""
    import io
    import logging

    from imagereward import cli

    assert cli.main(["models"]) == 0
    replaced = io.StringIO()
    monkeypatch.setattr("sys.stderr", replaced)
    logging.getLogger("imagereward.test").warning("a warning after stderr was replaced")
    assert "imagereward: a warning after stderr was replaced" in replaced.getvalue()
