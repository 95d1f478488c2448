"""Resident memory of this process, for the benchmarks' per-configuration worker processes."""

import resource
import sys
from pathlib import Path


def memory_mb() -> dict[str, float]:
    """Resident set size in MB: "rss" (current), "peak", and on Linux its split into "anon" (the process's own
    memory) and "file" (mapped file pages: shared page cache the kernel can drop, e.g. a memory-mapped .npy).

    On Linux everything comes from /proc/self/status: `ru_maxrss` would not do, because a process started by fork + exec
    inherits its parent's high-water mark, so a small worker of a large parent reports the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        kb = {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile") if key in fields}
        return {"rss": kb["VmRSS"] / 1024, "peak": kb["VmHWM"] / 1024, "anon": kb.get("RssAnon", 0) / 1024,
                "file": kb.get("RssFile", 0) / 1024}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"rss": peak, "peak": peak, "anon": float("nan"), "file": float("nan")}


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    memory = memory_mb()
    return memory["rss"], memory["peak"]
