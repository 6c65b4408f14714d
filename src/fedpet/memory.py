"""Peak resident memory (RSS) of a run: its own peak, not that of the process it runs in.

A study runs many runs in one process, and a resumed run spans several processes; the
figure a run reports is the largest of :func:`tree_peak_mb` over its rounds, each process
that worked on it adding its own. On Linux, :func:`reset_peak` starts a run's count from
what the process holds when the run begins (the kernel's high-water mark is reset); where
it cannot be reset, the figure is the process's peak since it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import resource
import sys
from pathlib import Path

import psutil


def _status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (None where there is no such file)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else None


def reset_peak() -> None:
    """Start this process's peak from what it holds now (Linux; elsewhere a no-op).

    Memory freed by an earlier run is first handed back to the system, so that it does
    not count as this run's.
    """
    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
    # not Linux, or not allowed: the figure is then the process's peak since it started
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _libc() -> ctypes.CDLL | None:
    """The C library on Linux (glibc's malloc tunables), else None.

    The process's own symbols, libc's among them: ``ctypes.util.find_library`` would start
    a process (``ldconfig``) each time a run starts.
    """
    return ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def map_large_blocks(threshold: int = 16 << 20) -> bool:
    """Have glibc map blocks of ``threshold`` bytes or more on their own, returned when freed.

    By default glibc raises that threshold (up to 32 MB) each time a mapped block is freed,
    and serves later blocks of that size (evaluation's attention scores) from the heap,
    where they stay resident once freed; a fixed threshold keeps them mapped. On a small
    LoRA run the peak RSS went from 1.35 GB to 1.25 GB (means of 7 and 3 runs; it varies
    by 0.2 GB from run to run) at the same speed; 1 MB went lower but cost a fifth of the
    training speed in page faults. Returns whether the setting took (Linux with glibc;
    elsewhere nothing changes).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt is not None and mallopt(m_mmap_threshold, threshold) == 1)


def own_peak_mb() -> float:
    """The peak RSS of this process in MB, since it started or since :func:`reset_peak`."""
    hwm = _status_kb("self", "VmHWM")
    if hwm is not None:
        return hwm / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, kB here


def tree_peak_mb() -> float:
    """The peak RSS of this process plus that of every process it started (Ray's), in MB.

    Each descendant counts with its own peak where the system keeps one (Linux), else with
    its resident memory now: the sum can exceed the tree's peak at any one instant, never
    fall short of it.
    """
    total = own_peak_mb()
    for child in psutil.Process().children(recursive=True):
        try:
            hwm = _status_kb(child.pid, "VmHWM")
            total += hwm / 1024 if hwm is not None else child.memory_info().rss / 2**20
        except psutil.Error:
            continue  # it ended meanwhile
    return total
