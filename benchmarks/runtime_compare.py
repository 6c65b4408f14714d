"""fedpet's runtimes against a plain Flower app on Flower's simulation engine, same work.

10 clients x 96 rotten_tomatoes examples (iid), LoRA r=8, all 10 clients in each of 2
rounds, max length 64, the packaged MiniLM. The contenders: ``fedpet run`` in process
(``simulation``, and ``simulation-parallel``: the same with ``federation.parallel_clients``
``auto``, a round's clients trained together), ``fedpet run --runtime flower-sim``, and
``benchmarks/flower_plain_app.py``,
a ClientApp and ServerApp as a Flower user writes them, run by
``flwr.simulation.run_simulation``. Every one evaluates the final model on validation and
test only (fedpet with ``federation.eval_every`` = its rounds). Each runs as its own
process; the figures are its whole wall time and the peak of the summed resident memory of
the process and all its descendants (Ray's processes included), sampled every 0.1 s.
Target: fedpet's simulation at least 2x faster than the plain Flower app, with at most a
third of its memory.
Usage: python benchmarks/runtime_compare.py
       [--contenders simulation,simulation-parallel,flower-sim,flower-app]
"""

from __future__ import annotations

import argparse
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
    "--set", "federation.eval_every=2",
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


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak tree RSS (GB) of one process running ``cmd``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.DEVNULL)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(root))
            time.sleep(0.1)
        wall = time.perf_counter() - start
        log.seek(0)
        printed = log.read()
    if proc.returncode != 0 or "test accuracy" not in printed:  # the Flower app's last line
        raise SystemExit(f"{' '.join(cmd[:4])} failed (status {proc.returncode})")
    return wall, peak / 1e9


def command(contender: str, out: Path) -> list[str]:
    """The command line of one contender."""
    if contender == "flower-app":
        return [sys.executable, str(Path(__file__).with_name("flower_plain_app.py"))]
    parallel = contender == "simulation-parallel"
    runtime = "simulation" if parallel else contender
    run = [sys.executable, "-m", "fedpet.cli", "run", "--runtime", runtime, "--out", str(out)]
    together = ["--set", "federation.parallel_clients=auto"] if parallel else []
    return [*run, *WORKLOAD, *together]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--contenders", default="simulation,simulation-parallel,flower-sim,flower-app"
    )
    contenders = parser.parse_args().contenders.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="fedpet-runtimes-"))
    results = {c: measure(command(c, tmp / c)) for c in contenders}
    print("contender             wall s   peak tree RSS GB")
    for contender, (wall, rss) in results.items():
        print(f"{contender:<20} {wall:7.1f}   {rss:8.2f}")
    for ours in ("simulation", "simulation-parallel"):
        if {ours, "flower-app"} <= results.keys():
            (sim_wall, sim_rss), (app_wall, app_rss) = results[ours], results["flower-app"]
            print(f"{ours} is {app_wall / sim_wall:.2f}x faster than the Flower app (target >= 2)")
            print(f"{ours} uses {sim_rss / app_rss:.2f} of its memory (target <= 0.33)")


if __name__ == "__main__":
    main()
