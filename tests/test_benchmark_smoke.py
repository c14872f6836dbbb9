"""The benchmarks run end to end on a tiny model, so they cannot rot (no timings asserted)."""

import json
import subprocess
import sys

import pytest

from helpers import REPO


def test_speed_benchmark_tiny(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--tiny", "--dtypes", "fp32,int8",
         "--eval-prompts", "2", "--repeats", "1", "--rounds", "2", "--workdir", str(tmp_path / "work"),
         "--json", str(out),
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


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_ceiling_bound_places_every_flop_of_a_call(tiny_model, dtype):
    """benchmarks/ceiling_bound.py's groups, from the profiler's shapes, account for every
    FLOP that FlopCounterMode counts in a call, on the inference paths the call takes."""
    import imagereward

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ceiling_bound import GROUPS, profiled_call
    from scorer_ceiling import flops_per_pair, workload

    pairs = workload(3)
    counted = flops_per_pair(imagereward.load(tiny_model, device="cpu"), pairs) * 3
    model = imagereward.load(tiny_model, device="cpu", dtype=None if dtype == "fp32" else dtype)
    call = profiled_call(model, pairs)
    assert sum(call["flops"].values()) == pytest.approx(counted, rel=1e-9)
    assert call["flops"]["linear products"] > 0 and call["flops"]["attention kernel"] > 0
    assert set(call["seconds"]) == set(GROUPS)
    assert sum(call["seconds"].values()) == pytest.approx(call["wall"], rel=1e-6) and call["unprofiled_wall"] > 0
