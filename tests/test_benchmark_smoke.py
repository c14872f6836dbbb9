"""The speed benchmark runs end to end on a tiny model, so it cannot rot (no timings asserted)."""

import json
import subprocess
import sys

from helpers import REPO


def test_speed_benchmark_tiny(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--tiny", "--dtypes", "fp32,int8",
         "--eval-prompts", "2", "--repeats", "1", "--rounds", "2", "--workdir", str(tmp_path / "work"), "--json", str(out),
         "--markdown", str(tmp_path / "table.md")],
        check=True,
    )
    result = json.loads(out.read_text())
    ours = result["workloads"]["ours-fp32"]
    assert ours["load"]["seconds"] > 0 and ours["import_seconds"] > 0
    assert len(ours["rank"]["rewards"]) == 10
    assert len(ours["rank"]["seconds"]) == 2  # one timed call in each of two rounds
    assert sum(len(r) for r in ours["eval"]["rewards"]) == ours["eval"]["count"] > 0
    assert len(ours["matrix"]["rewards"]) == 4 and all(len(r) == 6 for r in ours["matrix"]["rewards"])
    assert "matrix" in (tmp_path / "table.md").read_text()
    int8 = result["workloads"]["ours-int8"]  # int8 layers on the bf16 model, calibrated in the run
    assert len(int8["rank"]["rewards"]) == 10 and int8["rank"]["rewards"] != ours["rank"]["rewards"]
