"""How much of the machine the host took while a test ran.

A few tests put a floor under throughput (a rate limit must not waste its slots). On a
virtual machine the hypervisor can take CPU from every process at once ("steal"), and a
shared disk can stall every commit ("I/O wait"); a floor missed then measures the host,
not Conveyor. Those tests check their ceilings always, and skip the floor, saying why, only
when it was missed while the host took a large share.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Above this share of CPU time lost to steal and I/O wait, a missed floor is not judged.
UNFAIR_SHARE = 0.05


def _cpu_times() -> tuple[int, int] | None:
    """(steal + iowait, total) jiffies since boot, from /proc/stat; None where unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return steal + iowait, user + nice + system + idle + iowait + irq + softirq + steal


class HostShare:
    """Started when created; `lost()` is the share of CPU time lost since then."""

    def __init__(self) -> None:
        self._start = _cpu_times()

    def lost(self) -> float:
        end = _cpu_times()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return 0.0
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


def floor_missed(share: HostShare, what: str) -> None:
    """Call when a throughput floor was missed: skips if the host took too much, with the
    figures; returns otherwise, and the caller's assertion fails."""
    lost = share.lost()
    if lost > UNFAIR_SHARE:
        pytest.skip(
            f"{what}, while the host took {lost:.0%} of the CPU time (steal and I/O wait): "
            "the ceilings held; the floor is not judged on a machine this busy"
        )
