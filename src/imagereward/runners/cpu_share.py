"""torch threads for a process that Ray gives a share of a machine's CPUs."""


def threads_for(cpus: float) -> int:
    """Its CPU share, rounded, at least one: a replica or actor that runs more threads than
    it holds CPUs oversubscribes the machine it shares with other processes."""
    return max(1, int(round(cpus)))
