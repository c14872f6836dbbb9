"""``score-dataset`` on Ray Data: every layout against in-process ``score_batch``, bad items,
bad inputs, a driver killed mid-job, a worker node lost mid-job.

One local Ray cluster (2 CPUs, no dashboard) serves the whole module; drivers that get
killed run as subprocesses this module starts and ends by their pid.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import ASSETS, BERT_VOCAB, CLIP_BPE, save_tiny_model  # noqa: E402
from imagereward.cli import main  # noqa: E402
from imagereward.config import CLIPConfig, HeadConfig  # noqa: E402
from imagereward.models.head import RewardHead  # noqa: E402
from imagereward.runners.dataset import Columns, DatasetInputError, DatasetJob, ModelSpec, plan_input  # noqa: E402
from imagereward.tokenizers.clip_bpe import BPE_ENV  # noqa: E402
from test_baselines import write_clip_archive  # noqa: E402

# CLIP (and Aesthetic, on CLIP's image tower) see 48 px images, the tiny ImageReward 32 px:
# the job decodes each image once per distinct preprocessing.
CLIP_48 = CLIPConfig(embed_dim=64, image_size=48, patch_size=16, vision_width=128, vision_layers=2,
                     vision_heads=2, text_width=128, text_layers=2, text_heads=2)
PROMPTS = ["a red bicycle", "an ocean with birds", "a cat", "a red bicycle"]
ENV = {"IMAGEREWARD_BERT_VOCAB": str(BERT_VOCAB), BPE_ENV: str(CLIP_BPE),
       "HF_HUB_OFFLINE": "1", "IMAGEREWARD_OFFLINE": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster: a 2-CPU head node; a test may add and remove worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in ENV}
    os.environ.update(ENV)  # Ray's workers inherit these: no test reaches a hub
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> List[ModelSpec]:
    root = tmp_path_factory.mktemp("models")
    clip = write_clip_archive(root / "ViT-L-14.pt", config=CLIP_48)
    torch.manual_seed(3)
    head = RewardHead(CLIP_48.embed_dim, HeadConfig())
    head.reset_parameters()
    aesthetic = root / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head.state_dict(), aesthetic)
    os.environ["IMAGEREWARD_BERT_VOCAB"] = str(BERT_VOCAB)
    return [
        ModelSpec("ImageReward-v1.0", {"weights": save_tiny_model(root)}),
        ModelSpec("CLIP", {"weights": str(clip)}, options={"bpe_file": str(CLIP_BPE)}),
        ModelSpec("Aesthetic", {"weights": str(aesthetic), "clip": str(clip)}),
    ]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> List[Path]:
    """The four shared assets and four odd images of other formats, modes and shapes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    made = {"wide.png": (40, 90, "RGB"), "rgba.png": (70, 50, "RGBA"), "gray.jpg": (64, 64, "L"),
            "small.webp": (20, 24, "RGB")}
    paths = list(ASSETS)
    for name, (h, w, mode) in made.items():
        pixels = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA").convert(mode)
        image.save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def rows(images) -> List[Dict[str, str]]:
    return [{"id": f"s{i:02d}", "prompt": PROMPTS[i % len(PROMPTS)], "file": str(p)}
            for i, p in enumerate(images)]


def in_process(models, pairs: Dict[str, Tuple[str, str]]) -> Dict[str, Dict[str, float]]:
    """In-process ``score_batch`` of ``pairs`` (id -> prompt and image path), by id and model."""
    os.environ.update(ENV)
    out: Dict[str, Dict[str, float]] = {key: {} for key in pairs}
    for spec in models:
        scorer = spec.replace(device="cpu").load()
        scores = scorer.score_batch([prompt for prompt, _ in pairs.values()], [path for _, path in pairs.values()])
        for key, score in zip(pairs, scores):
            out[key][spec.name] = score
    return out


@pytest.fixture(scope="module")
def expected(models, rows) -> Dict[str, Dict[str, float]]:
    """In-process ``score_batch`` of every good row, by id and model."""
    return in_process(models, {r["id"]: (r["prompt"], r["file"]) for r in rows})


def _read(output: Path) -> "pa.Table":
    return pq.read_table(str(output), schema=None)


def check_output(output: Path, expected, bad: Optional[Dict[str, str]] = None, id_of=lambda i: i) -> "pa.Table":
    """Every input row once; good rows equal in-process scores; bad rows carry their error."""
    bad = bad or {}
    table = _read(output)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted([id_of(i) for i in expected] + list(bad)), "rows lost or duplicated"
    records = {r["id"]: r for r in table.to_pylist()}
    worst = 0.0
    for key, scores in expected.items():
        record = records[id_of(key)]
        assert record["error"] is None, record
        for column, value in scores.items():
            worst = max(worst, abs(record[column] - value))
    assert worst <= 1e-5, worst
    for key, message in bad.items():
        assert message in (records[key]["error"] or ""), records[key]
        assert "object at 0x" not in records[key]["error"], records[key]  # the item is named, not repr'd
        assert all(records[key][m] is None for m in next(iter(expected.values())))
    return table


def run_job(input_path, output, models, **options):
    job = DatasetJob(input=str(input_path), output=str(output), models=models, progress=False,
                     batch_size=3, **options)
    return job.run()


# -- layouts -------------------------------------------------------------------------------------


def test_jsonl_manifest_three_models_with_bad_items(cluster, models, rows, expected, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [{"id": r["id"], "prompt": r["prompt"], "image": os.path.relpath(r["file"], folder)}
             for r in rows]
    lines += [{"id": "missing", "prompt": "x", "image": "nowhere.png"},
              {"id": "corrupt", "prompt": "x", "image": "corrupt.png"},
              {"id": "noprompt", "prompt": None, "image": os.path.relpath(rows[0]["file"], folder)}]
    manifest = folder / "prompts.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # Quarter-CPU decoding tasks leave 4 slots beside the actor: fragments of 4 rows are
    # read in blocks of 3 (a batch), and each fragment's rows come back in two pieces.
    summary = run_job(manifest, tmp_path / "out", models, fragment_rows=4, decode_cpus=0.25)
    assert summary.complete and summary.fragments == 3
    assert (summary.rows_in, summary.rows_out, summary.errors) == (11, 11, 3)
    check_output(tmp_path / "out", expected,
                 {"missing": "Image file not found", "corrupt": "cannot read image file",
                  "noprompt": "no prompt"})

    # The two images are there now: a rerun with retry_errors scores the fragment that
    # held errors again (all three errors are in the last fragment), and keeps the others.
    kept = {name: (tmp_path / "out" / name).stat().st_mtime_ns
            for name in os.listdir(tmp_path / "out") if name.startswith("part-")}
    Image.new("RGB", (30, 30), (10, 120, 200)).save(folder / "nowhere.png")
    Image.new("RGB", (30, 30), (200, 120, 10)).save(folder / "corrupt.png")
    assert run_job(manifest, tmp_path / "out", models, fragment_rows=4).fragments_retried == 0  # a plain rerun
    summary = run_job(manifest, tmp_path / "out", models, fragment_rows=4, retry_errors=True)
    assert summary.complete and (summary.fragments_retried, summary.rows_scored, summary.errors) == (1, 3, 1)
    assert "1 fragments with errors again" in summary.line()
    rescored = [name for name, mtime in kept.items() if (tmp_path / "out" / name).stat().st_mtime_ns != mtime]
    assert len(rescored) == 1 and set(os.listdir(tmp_path / "out")) >= set(kept)
    fixed = in_process(models, {"missing": ("x", str(folder / "nowhere.png")),
                                "corrupt": ("x", str(folder / "corrupt.png"))})
    check_output(tmp_path / "out", {**expected, **fixed}, {"noprompt": "no prompt"})


def test_csv_manifest_ids_default_to_image_paths(cluster, models, rows, expected, tmp_path):
    import csv

    with open(tmp_path / "list.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "path"])
        for r in rows:
            writer.writerow([r["prompt"], r["file"]])
    by_file = {r["id"]: r["file"] for r in rows}
    summary = run_job(tmp_path / "list.csv", tmp_path / "out", models[:1],
                      columns=Columns(prompt="caption", image="path"))
    assert summary.complete and summary.errors == 0
    only_ir = {k: {"ImageReward-v1.0": v["ImageReward-v1.0"]} for k, v in expected.items()}
    check_output(tmp_path / "out", only_ir, id_of=lambda i: by_file[i])


def _bytes(path) -> bytes:
    return Path(path).read_bytes()


def test_parquet_bytes_pick_a_pic_layout(cluster, models, rows, expected, tmp_path):
    folder = tmp_path / "pickapic"
    folder.mkdir()
    table = pa.table({
        "caption": [r["prompt"] for r in rows] + ["x"],
        "jpg_0": [_bytes(r["file"]) for r in rows] + [b"garbage"],
        "image_0_uid": [r["id"] for r in rows] + ["garbage"],
        "ranking_id": list(range(len(rows) + 1)),
    })
    pq.write_table(table.slice(0, 5), folder / "train-0.parquet", row_group_size=2)
    pq.write_table(table.slice(5), folder / "train-1.parquet", row_group_size=2)
    summary = run_job(folder, folder / "scores", models, fragment_rows=3, columns=Columns(
        id="image_0_uid", prompt="caption", image="jpg_0", keep=("ranking_id",)))
    assert summary.complete and summary.fragments == 3  # row groups (2+2, 1) and (2+2)
    out = check_output(folder / "scores", expected, {"garbage": "cannot read image file"})
    # The output inside the input folder is not input: a rerun is the same job, all done.
    again = run_job(folder, folder / "scores", models, fragment_rows=3, columns=Columns(
        id="image_0_uid", prompt="caption", image="jpg_0", keep=("ranking_id",)))
    assert again.complete and again.fragments_scored == 0 and again.rows_out == len(rows) + 1
    assert out.schema.field("ranking_id").type == pa.int64()
    assert {r["id"]: r["ranking_id"] for r in out.to_pylist()}["s03"] == 3


def test_parquet_struct_imagerewarddb_layout_and_paths(cluster, models, rows, expected, tmp_path):
    structs = [{"bytes": _bytes(r["file"]), "path": f"{r['id']}.webp"} for r in rows]
    pq.write_table(pa.table({
        "image": structs, "prompt_id": [f"p{i}" for i in range(len(rows))],
        "prompt": [r["prompt"] for r in rows],
    }), tmp_path / "db.parquet")
    summary = run_job(tmp_path / "db.parquet", tmp_path / "out", models[:1],
                      columns=Columns(keep=("prompt_id",)))
    assert summary.complete
    only_ir = {k: {"ImageReward-v1.0": v["ImageReward-v1.0"]} for k, v in expected.items()}
    check_output(tmp_path / "out", only_ir, id_of=lambda i: f"{i}.webp")  # ids: the struct's path
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "prompt": [r["prompt"] for r in rows],
                             "image": [r["file"] for r in rows]}), tmp_path / "paths.parquet")
    run_job(tmp_path / "paths.parquet", tmp_path / "out2", models[:1])
    check_output(tmp_path / "out2", only_ir)


def test_webdataset_shards(cluster, models, rows, expected, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard, chunk in enumerate([rows[:5], rows[5:]]):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as archive:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            for i, r in enumerate(chunk):
                suffix = Path(r["file"]).suffix
                add(f"{r['id']}{suffix}", _bytes(r["file"]))
                if i % 2:
                    add(f"{r['id']}.txt", r["prompt"].encode())
                else:
                    add(f"{r['id']}.json", json.dumps({"prompt": r["prompt"], "n": i}).encode())
            if shard == 1:
                add("lonely.txt", b"a prompt without an image")
    summary = run_job(folder, tmp_path / "out", models)
    assert summary.complete and summary.fragments == 2
    check_output(tmp_path / "out", expected, {"lonely": "no image"})


# -- bad input fails before any work ---------------------------------------------------------------


def test_bad_inputs_fail_before_any_work_naming_them(tmp_path):
    with pytest.raises(DatasetInputError, match="input not found: .*nothere"):
        plan_input(str(tmp_path / "nothere"))
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "picture": "x.png"}\n')
    with pytest.raises(DatasetInputError, match=r"m.jsonl: no column 'image'"):
        plan_input(str(tmp_path / "m.jsonl"))
    (tmp_path / "n.jsonl").write_text('{"prompt": "a", "image": "x.png"}\n{not json\n')
    with pytest.raises(DatasetInputError, match="cannot read manifest .*n.jsonl"):
        plan_input(str(tmp_path / "n.jsonl"))
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(DatasetInputError, match="cannot read parquet file .*p.parquet"):
        plan_input(str(tmp_path / "p.parquet"))
    pq.write_table(pa.table({"prompt": [1], "image": [b"x"]}), tmp_path / "q.parquet")
    with pytest.raises(DatasetInputError, match="'prompt' holds int64, expected text"):
        plan_input(str(tmp_path / "q.parquet"))
    (tmp_path / "s.tar").write_bytes(b"definitely not a tar archive" * 30)
    with pytest.raises(DatasetInputError, match="cannot read tar shard .*s.tar"):
        plan_input(str(tmp_path / "s.tar"))
    assert main(["score-dataset", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "o")]) == 3


def test_a_different_job_is_refused_in_the_same_output(tmp_path, models):
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "image": "x.png"}\n')
    DatasetJob(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), models[:1]).open_ledger()
    with pytest.raises(DatasetInputError, match="different job .models ImageReward-v1.0 then, "
                       "ImageReward-v1.0, CLIP now"):
        DatasetJob(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), models[:2]).open_ledger()
    (tmp_path / "n.jsonl").write_text('{"prompt": "a", "image": "x.png"}\n' * 3)
    with pytest.raises(DatasetInputError, match=r"other input files \(new: n.jsonl; gone: m.jsonl\)"):
        DatasetJob(str(tmp_path / "n.jsonl"), str(tmp_path / "out"), models[:1]).open_ledger()
    other = models[0].replace(options={"batch_size": 3})
    with pytest.raises(DatasetInputError, match="ImageReward-v1.0: other options"):
        DatasetJob(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), [other]).open_ledger()


def test_importing_the_package_does_not_import_ray():
    code = "import imagereward, imagereward.runners.dataset, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- crashes ---------------------------------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray
    from imagereward.runners.dataset import DatasetJob, ModelSpec
    args = json.loads(sys.argv[1])
    ray.init(address=args["address"], logging_level="WARNING")
    job = DatasetJob(args["input"], args["output"], [ModelSpec.from_dict(m) for m in args["models"]],
                     fragment_rows=2, batch_size=2, actors=args["actors"], cpus_per_actor=0.5,
                     progress=False, on_fragment=lambda key: time.sleep(args["pause"]))
    print(job.run().line(), flush=True)
""")


def _manifest(folder: Path, rows, copies: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"id": f"{r['id']}-{k}", "prompt": r["prompt"], "image": r["file"]}
             for k in range(copies) for r in rows]
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _start_driver(cluster, manifest, output, models, actors=1, pause=0.5) -> subprocess.Popen:
    args = {"address": cluster.address, "input": str(manifest), "output": str(output),
            "models": [m.to_dict() for m in models],
            "actors": actors, "pause": pause}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_parts(output: Path, count: int, driver: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list(output.glob("part-*.parquet"))) if output.is_dir() else 0
        if done >= count:
            return done
        if driver.poll() is not None:
            pytest.fail(f"driver ended early: {driver.stdout.read()}")
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    pytest.fail(f"no {count} part files within {timeout} s")


def _ids_once(output: Path, manifest: Path) -> None:
    wanted = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    ids = _read(output).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a row is in the output twice"
    assert sorted(ids) == sorted(wanted), "rows are missing"


def test_driver_killed_mid_job_then_rerun_gives_every_row_once(cluster, models, rows, tmp_path):
    manifest = _manifest(tmp_path / "in", rows, copies=2)  # 16 rows, 8 fragments
    output = tmp_path / "out"
    driver = _start_driver(cluster, manifest, output, models[:1])
    try:
        written = _wait_for_parts(output, 2, driver)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL
    assert written < 8, "the job ended before the kill"
    # A crash while writing leaves a temporary file: the rerun removes it.
    (output / ".tmp-999-part-0000.parquet").write_bytes(b"half a file")
    before = len(list(output.glob("part-*.parquet")))
    summary = DatasetJob(str(manifest), str(output), models[:1], fragment_rows=2, batch_size=2,
                         progress=False).run()
    assert summary.complete and summary.fragments_scored == 8 - before
    assert (summary.rows_in, summary.rows_out, summary.errors) == (16, 16, 0)
    assert not list(output.glob(".tmp-*"))
    _ids_once(output, manifest)


def test_a_fragment_is_written_before_the_next_block_is_scored(cluster, models, rows, tmp_path):
    """A scored fragment is written at once, not held until the next block arrives (Ray
    Data's iterator prefetches a block before yielding one: in a long job that held each
    finished fragment back for a whole fragment's time, and a crash lost it). The second
    fragment's last image is a pipe the test feeds only once the first part file is
    written (opening it waits for a writer); a watchdog feeds it after 60 s so that the
    job ends either way."""
    folder = tmp_path / "in"
    folder.mkdir()
    pipe = folder / "late.webp"
    os.mkfifo(pipe)
    # Fragments of 3 rows, the size of a batch (Ray Data would bundle smaller blocks).
    lines = [{"id": f"a{i}", "prompt": r["prompt"], "image": r["file"]} for i, r in enumerate(rows[:3])]
    lines += [{"id": f"b{i}", "prompt": r["prompt"], "image": r["file"]} for i, r in enumerate(rows[3:5])]
    lines.append({"id": "late", "prompt": PROMPTS[0], "image": pipe.as_uri()})  # read through pyarrow
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fed_by: List[str] = []
    lock = threading.Lock()

    def feed(by: str) -> None:
        with lock:
            if fed_by:
                return
            fed_by.append(by)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the decoding task opens the pipe: it then reads it empty
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader yet
                time.sleep(0.05)

    watchdog = threading.Timer(60, feed, args=("the watchdog",))
    watchdog.daemon = True
    watchdog.start()
    try:
        summary = run_job(manifest, tmp_path / "out", models[:1], fragment_rows=3,
                          on_fragment=lambda key: threading.Thread(target=feed, args=("a part file",)).start())
    finally:
        watchdog.cancel()
    assert fed_by == ["a part file"], "the first fragment was not written until the second was scored"
    assert summary.complete and summary.errors == 1, summary.line()
    errors = {r["id"]: r["error"] for r in _read(tmp_path / "out").to_pylist()}
    assert sorted(errors) == ["a0", "a1", "a2", "b0", "b1", "late"]
    assert "late.webp" in errors["late"]  # a pipe is no image file: its row says so, the job goes on


def test_worker_node_removed_mid_job_loses_nothing(cluster, models, rows, tmp_path):
    import ray

    manifest = _manifest(tmp_path / "in", rows, copies=3)  # 24 rows, 12 fragments
    output = tmp_path / "out"
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    driver = _start_driver(cluster, manifest, output, models[:1], actors=2, pause=0.3)
    try:
        _wait_for_parts(output, 2, driver)
        cluster.remove_node(worker)
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a job wedged by the lost node: end it, rerun below
            driver.kill()
            driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 1
    summary = DatasetJob(str(manifest), str(output), models[:1], fragment_rows=2, batch_size=2,
                         actors=2, cpus_per_actor=0.5, progress=False).run()
    assert summary.complete and (summary.rows_in, summary.rows_out) == (24, 24)
    _ids_once(output, manifest)


def test_cli_runs_a_manifest_and_reports(cluster, models, rows, tmp_path, capsys):
    manifest = _manifest(tmp_path / "in", rows[:3], copies=1)
    with open(manifest, "a") as handle:
        handle.write(json.dumps({"id": "gone", "prompt": "p", "image": "gone.png"}) + "\n")
    args = ["score-dataset", str(manifest), "-o", str(tmp_path / "out"), "--no-progress",
            "--checkpoint", f"ImageReward-v1.0={models[0].files['weights']}", "--batch-size", "2"]
    assert main(args) == 4  # done, with an error row
    err = capsys.readouterr().err
    assert "complete: 4 rows in, 4 rows out, 1 errors" in err and "images/s" in err
    assert main(args) == 4  # nothing left to do: the same summary
    assert "this run scored 0 rows" in capsys.readouterr().err
    assert main([*args, "--json", "--quiet"]) == 4
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert err == "" and summary["rows_in"] == 4 and summary["errors"] == 1 and summary["complete"]


def test_cli_beside_a_running_cluster_starts_a_private_ray(cluster, models, rows, tmp_path):
    """This module's cluster runs on this machine: the command must not join it (its actors
    would run in another environment), and says where it runs in its first line."""
    import ray._private.state

    drivers = len(ray._private.state.jobs())
    manifest = _manifest(tmp_path / "in", rows[:2], copies=1)
    env = dict(os.environ, **ENV, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "imagereward", "score-dataset", str(manifest), "-o", str(tmp_path / "out"),
         "--no-progress", "--checkpoint", f"ImageReward-v1.0={models[0].files['weights']}"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("imagereward:")]
    assert "a private Ray on this machine" in lines[0]
    assert "Token authentication" not in result.stderr  # Ray's notices a user cannot act on
    assert "complete: 2 rows in, 2 rows out, 0 errors" in lines[-1]
    assert len(ray._private.state.jobs()) == drivers  # no driver joined this module's cluster


def test_cli_without_the_ray_extra_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    for module in [m for m in sys.modules if m == "pyarrow" or m.startswith(("pyarrow.", "imagereward.runners.dataset"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "image": "x.png"}\n')
    assert main(["score-dataset", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'imagereward[ray]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_killed_command_leaves_no_process_of_its_private_ray(models, rows, tmp_path):
    from imagereward.runners.private_ray import descendants

    manifest = _manifest(tmp_path / "in", rows[:2] * 400, copies=1)  # long enough to be killed mid-job
    env = dict(os.environ, **ENV, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "imagereward", "score-dataset", str(manifest), "-o", str(tmp_path / "out"),
         "--no-progress", "--fragment-rows", "2", "--batch-size", "2",
         "--checkpoint", f"ImageReward-v1.0={models[0].files['weights']}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        tree: Dict[int, int] = {}
        while time.monotonic() < deadline and not list((tmp_path / "out").glob("part-*")):
            tree.update(descendants(driver.pid))
            time.sleep(0.2)
        assert driver.poll() is None, "the job ended before it could be killed"
        tree.update(descendants(driver.pid))
        assert len(tree) >= 3  # Ray's own processes and the job's workers
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 20
    alive = tree
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {pid: start for pid, start in tree.items() if _still_running(pid, start)}
    assert not alive, f"left behind: {sorted(alive)}"


def _still_running(pid: int, start: int) -> bool:
    """That very process (the same start time, not a recycled id) is alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return int(fields[19]) == start


def test_repeated_manifest_ids_are_warned_about_once_with_the_count(tmp_path):
    import logging

    from imagereward.runners.dataset import inputs

    rows = [{"id": i % 3, "prompt": "p", "image": f"{i}.png"} for i in range(5)]  # ids 0 1 2 0 1
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    inputs.logger.addHandler(handler)
    try:
        plan_input(str(tmp_path / "m.jsonl"), fragment_rows=2)
    finally:
        inputs.logger.removeHandler(handler)
    assert len(seen) == 1 and seen[0].startswith("2 manifest rows repeat the id")


def test_scoring_actors_take_their_torch_threads_from_their_cpus(tmp_path, monkeypatch):
    """On a cluster, an actor's CPU share, so that actors sharing a node do not oversubscribe
    it (torch's default is every core); on a private Ray, the machine's CPUs shared among the
    actors, as in-process scoring uses them."""
    from imagereward.runners.dataset import job as job_module

    job = DatasetJob(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    assert job.actor_threads(private_ray=False) == 1
    assert DatasetJob("in", "out", cpus_per_actor=2.5).actor_threads(False) == 2
    assert DatasetJob("in", "out", cpus_per_actor=0.25).actor_threads(False) == 1
    assert DatasetJob("in", "out", cpus_per_actor=4, threads_per_actor=3).actor_threads(False) == 3
    monkeypatch.setattr(job_module, "cpu_allocation", lambda: 8.0)
    assert job.actor_threads(private_ray=True) == 8
    assert DatasetJob("in", "out", actors=3).actor_threads(True) == 3
    assert DatasetJob("in", "out", actors=16).actor_threads(True) == 1
    assert DatasetJob("in", "out", threads_per_actor=2).actor_threads(True) == 2


def test_a_fragment_is_read_in_blocks_in_order(tmp_path):
    """Blocks of ``block_rows`` rows, in order, every row once."""
    from imagereward.runners.dataset.source import FragmentSource

    image = _bytes(ASSETS[0])
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(7)], "prompt": ["p"] * 7, "image": [image] * 7}),
                   tmp_path / "rows.parquet")
    plan = plan_input(str(tmp_path / "rows.parquet"), fragment_rows=10)
    assert len(plan.fragments) == 1
    source = FragmentSource(plan.fragments, plan.columns, plan.keep_types, {}, block_rows=3)
    (task,) = source.get_read_tasks(1)
    blocks = list(task())
    assert [block.num_rows for block in blocks] == [3, 3, 1]
    assert [i for block in blocks for i in block.column("id").to_pylist()] == [f"r{i}" for i in range(7)]
    with pytest.raises(ValueError, match="block_rows"):
        FragmentSource(plan.fragments, plan.columns, plan.keep_types, {}, block_rows=0)


def test_fragments_are_split_so_that_decoding_fills_the_cpus_the_actors_leave():
    """Ray Data decodes a block in one task: a 10,000-row fragment read whole was decoded on
    one CPU of however many. Blocks never go below a batch, and where only one decoding task
    fits beside the actors (2 CPUs, one actor), fragments stay whole."""
    from imagereward.runners.dataset.inputs import Fragment

    def fragments(*rows):
        return [Fragment(key=f"m{i}", layout="manifest", path=f"m{i}.jsonl", stop=n or 0, rows=n)
                for i, n in enumerate(rows)]

    job = DatasetJob("in", "out", batch_size=16)
    assert job.read_block_rows(fragments(10_000), cpus=2) == 10_000  # one decoding slot
    assert job.read_block_rows(fragments(10_000, 10_000), cpus=2) == 20_000  # whole fragments
    assert job.read_block_rows(fragments(10_000), cpus=41) == 250  # 40 slots, 40 blocks
    assert job.read_block_rows(fragments(*[10_000] * 100), cpus=41) == 25_000  # enough fragments
    assert job.read_block_rows(fragments(100), cpus=64) == 16  # never below a batch
    gpus = DatasetJob("in", "out", batch_size=64, actors=8, cpus_per_actor=1, decode_cpus=0.5)
    assert gpus.read_block_rows(fragments(50_000), cpus=96) == 285  # 176 half-CPU slots
    assert job.read_block_rows(fragments(None), cpus=11) == 1_000  # a shard counts as a fragment
    assert DatasetJob("in", "out", decode_cpus=0).read_block_rows(fragments(10_000), cpus=5) == 2_500
    with pytest.raises(ValueError, match="decode_cpus must not be negative"):
        DatasetJob("in", "out", decode_cpus=-1)


@pytest.mark.parametrize("option", ["--decode-cpus", "--cpus-per-actor", "--gpus-per-actor"])
def test_cli_refuses_negative_cpu_shares_naming_the_option(option, tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "image": "x.png"}\n')
    assert main(["score-dataset", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out"), option, "-1"]) == 2
    assert f"argument {option}: expected a number >= 0, got '-1'" in capsys.readouterr().err
