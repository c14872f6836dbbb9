"""Where a runner's model processes go when the user does not say."""

from __future__ import annotations


def default_gpus(cluster_gpus: float, int8: bool) -> float:
    """GPUs per model process (a server replica, a data-set actor) when none were asked
    for: one where the cluster has GPUs; none on a cluster without them, and none for a
    model with int8 layers, which run on the CPUs' int8 units."""
    return 1.0 if cluster_gpus > 0 and not int8 else 0.0
