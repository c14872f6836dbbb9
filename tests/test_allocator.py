"""Processes that own themselves (the CLI, server replicas, Ray actors) keep freed memory
in the process (glibc malloc); ``load()`` inside a user's program leaves the allocator alone.

Without the setting, each forward pass of ViT-L gives back and page-faults in again about a
hundred megabytes per block. Measured here by minor page faults: a pattern like a
transformer block's (several tensors alive at once, then freed) repeated, with tensors of
24 MB and of 48 MB (above glibc's 32 MiB ceiling for its mmap threshold: ViT-H's MLP
hidden layer at 16 images is 42 MB in bf16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ASSETS
from imagereward.allocator import TUNING_ENV, USER_SETTINGS

PROBE = """
import json, resource, sys
if sys.argv[2] == "cli":  # as the command line does: the setting first, before torch or a model
    from imagereward.allocator import keep_freed_memory
    keep_freed_memory()
import torch
import imagereward
imagereward.load(sys.argv[1], config=__import__("helpers").tiny_config(), device="cpu")

def block():
    megabytes = int(sys.argv[3])
    tensors = [torch.empty(megabytes << 18).fill_(1.0) for _ in range(8)]  # 8 float32 tensors
    return sum(float(t[0]) for t in tensors)

block()
block()  # the heap reaches its size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(checkpoint, how: str = "cli", megabytes: int = 24, **env) -> int:
    environment = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    for name in (*USER_SETTINGS, TUNING_ENV):
        environment.pop(name, None)
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", PROBE, str(checkpoint), how, str(megabytes)], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["faults"]


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")


@linux_only
@pytest.mark.parametrize("megabytes", [24, 48])
def test_cpu_model_keeps_freed_memory_for_reuse(checkpoint, megabytes):
    # One block of 24 MB is 6,144 faults when it goes back to the kernel (48 MB: 12,288);
    # five rounds of eight blocks, 245,760 (491,520).
    assert _faults(checkpoint, megabytes=megabytes) < 3_000
    # Off: glibc's adaptive thresholds give at least one block back; above 32 MiB, each.
    assert _faults(checkpoint, megabytes=megabytes, **{TUNING_ENV: "0"}) > (6_000 if megabytes < 32 else 400_000)


@linux_only
def test_load_in_a_users_program_leaves_the_allocator_alone(checkpoint):
    assert _faults(checkpoint, "load") > 6_000


def test_commands_set_the_allocator_before_they_load(monkeypatch, capsys, tiny_model):
    """The setting is process-wide: the command line sets it before a model is laid out."""
    import imagereward
    from imagereward import allocator, cli

    order = []
    real_load = imagereward.load
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: order.append("allocator"))
    monkeypatch.setattr(imagereward, "load", lambda *a, **k: order.append("load") or real_load(*a, **k))
    assert cli.main(["score", "--checkpoint", tiny_model, "-p", "x", str(ASSETS[0])]) == 0
    assert order == ["allocator", "load"]


@linux_only
def test_malloc_settings_of_the_user_are_left_alone(checkpoint):
    # Every block above 128 KiB mmapped, as the user asked: every round faults.
    assert _faults(checkpoint, MALLOC_MMAP_THRESHOLD_="131072") > 200_000
