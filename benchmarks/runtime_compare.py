"""The in-process simulation runtime against Flower's simulation engine on the same workload.

10 clients x 96 rotten_tomatoes examples (iid), LoRA r=8, all 10 clients in each of 2
rounds, max length 64, the packaged MiniLM. Each runtime runs as its own ``fedpet run``
process; the figures are its wall time and the peak of the summed resident memory of the
process and all its descendants (Ray's processes included), sampled every 0.1 s.
Target: the simulation runtime at least 2x faster and at most a third of the memory.
Usage: python benchmarks/runtime_compare.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WORKLOAD = [
    "--method", "lora", "--max-train-samples", "960", "--partition", "iid",
    "--clients", "10", "--clients-per-round", "10", "--rounds", "2", "--max-length", "64",
]  # fmt: skip


def tree_rss(root: psutil.Process) -> int:
    """Summed resident memory of ``root`` and its descendants, in bytes."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(runtime: str, out: Path) -> tuple[float, float]:
    """Wall seconds and peak tree RSS (GB) of one ``fedpet run``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fedpet.cli", "run", "--runtime", runtime, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, *WORKLOAD], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"{runtime} run failed with status {proc.returncode}")
    return time.perf_counter() - start, peak / 1e9


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fedpet-runtimes-"))
    results = {runtime: measure(runtime, tmp / runtime) for runtime in ("simulation", "flower-sim")}
    print("runtime       wall s   peak tree RSS GB")
    for runtime, (wall, rss) in results.items():
        print(f"{runtime:<12} {wall:7.1f}   {rss:8.2f}")
    (sim_wall, sim_rss), (fl_wall, fl_rss) = results["simulation"], results["flower-sim"]
    print(f"simulation is {fl_wall / sim_wall:.2f}x faster (target >= 2)")
    print(f"simulation uses {sim_rss / fl_rss:.2f} of flower-sim's memory (target <= 0.33)")


if __name__ == "__main__":
    main()
