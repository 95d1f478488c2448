"""Resident memory of this process, for the benchmarks' per-configuration worker processes."""

import resource
import sys
from pathlib import Path


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB.

    On Linux both come from /proc/self/status: `ru_maxrss` would not do, because a process started by fork + exec
    inherits its parent's high-water mark, so a small worker of a large parent reports the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return peak, peak
