"""CPUs a process may use (affinity, cgroup quotas) and the torch threads taken from them."""

import os

import pytest
import torch

from helpers import ASSETS, run_cli
from imagereward import cpu_share
from imagereward.cpu_share import cpu_allocation, cpu_quota, threads_for, use_allocated_threads


def fake_cgroups(tmp_path, monkeypatch, own, files):
    """A cgroup file system under ``tmp_path``: ``own`` is /proc/self/cgroup's text,
    ``files`` maps paths below the root to their contents."""
    folder = tmp_path / f"fs{len(list(tmp_path.iterdir()))}"  # a fresh one on each call
    root = folder / "cgroup"
    root.mkdir(parents=True)
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    self_cgroup = folder / "self-cgroup"
    self_cgroup.write_text(own)
    monkeypatch.setattr(cpu_share, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(cpu_share, "SELF_CGROUP", str(self_cgroup))


@pytest.fixture
def torch_threads():
    """Puts torch's thread count back after a test that sets it."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_a_cpu_share_rounds_to_threads_and_never_to_none():
    assert [threads_for(c) for c in (0.25, 1.0, 1.5, 2.4, 2.5, 3.6, 8)] == [1, 1, 2, 2, 2, 4, 8]


def test_cgroup_v2_quota_of_a_container(tmp_path, monkeypatch):
    # A container's own cgroup namespace: its cgroup is "/", the mount's own folder.
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "150000 100000\n", "cgroup.controllers": "cpu"})
    assert cpu_quota() == 1.5


def test_cgroup_v2_tightest_quota_on_the_path_counts(tmp_path, monkeypatch):
    fake_cgroups(tmp_path, monkeypatch, "0::/kubepods/pod1/box\n", {
        "kubepods/cpu.max": "800000 100000\n",
        "kubepods/pod1/cpu.max": "300000 100000\n",
        "kubepods/pod1/box/cpu.max": "max 100000\n",
    })
    assert cpu_quota() == 3.0


def test_cgroup_v1_quota_and_no_quota(tmp_path, monkeypatch):
    own = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    fake_cgroups(tmp_path, monkeypatch, own, {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert cpu_quota() == 0.5
    fake_cgroups(tmp_path, monkeypatch, "3:cpu:/\n", {
        "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
    })
    assert cpu_quota() is None


def test_path_from_outside_the_namespace_reads_the_mount(tmp_path, monkeypatch):
    fake_cgroups(tmp_path, monkeypatch, "0::/host/slice/not-here\n", {"cpu.max": "200000 100000\n"})
    assert cpu_quota() == 2.0


def test_no_cgroup_files_means_no_quota(tmp_path, monkeypatch):
    fake_cgroups(tmp_path, monkeypatch, "garbage\n0::/\n", {"cpu.max": "not numbers\n"})
    assert cpu_quota() is None
    monkeypatch.setattr(cpu_share, "SELF_CGROUP", str(tmp_path / "missing"))
    assert cpu_quota() is None


def test_the_allocation_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "50000 100000\n"})
    assert cpu_allocation() == min(affinity, 0.5)
    monkeypatch.setattr(cpu_share, "SELF_CGROUP", str(tmp_path / "missing"))
    assert cpu_allocation() == affinity


def test_threads_follow_a_quota_below_torchs_default(tmp_path, monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "100000 100000\n"})
    assert use_allocated_threads() == 1 and torch.get_num_threads() == 1
    # A quota above torch's default never raises it.
    torch.set_num_threads(2)
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "6400000 100000\n"})
    assert use_allocated_threads() == 2 and torch.get_num_threads() == 2


def test_processes_of_one_machine_share_the_allocation(tmp_path, monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(4)
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "400000 100000\n"})
    if len(os.sched_getaffinity(0)) >= 4:
        assert use_allocated_threads(processes=2) == 2
    assert use_allocated_threads(processes=8) == 1 and torch.get_num_threads() == 1


def test_a_users_setting_wins(tmp_path, monkeypatch, torch_threads):
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "100000 100000\n"})
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert use_allocated_threads() == 2 and torch.get_num_threads() == 2  # torch follows the variable
    assert use_allocated_threads(3) == 3 and torch.get_num_threads() == 3  # and --threads over all


def test_cli_scores_with_the_allocated_threads(capsys, tiny_model, tmp_path, monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "100000 100000\n"})
    base = ["score", "--checkpoint", tiny_model, "--prompt", "an ocean", str(ASSETS[0]), "--verbose"]
    code, _, err = run_cli(capsys, *base)
    assert code == 0 and "torch threads: 1 " in err and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    code, _, err = run_cli(capsys, *base, "--threads", "2")
    assert code == 0 and "torch threads: 2 " in err and torch.get_num_threads() == 2
