"""Overhead of the simulation runtime on the packaged MiniLM and rotten_tomatoes.

(a) Training throughput (examples per second of training work, evaluation excluded) of a
    federated LoRA round against centralized LoRA training on the same examples.
    Target: federated / centralized >= 0.95.
(b) Peak RSS of a LoRA run with 10 clients against one with 1,000 clients, both sampling 10
    clients of 10 examples per round, with ``--algorithm`` (SCAFFOLD keeps a control per
    client on disk: memory must stay flat too). Target: difference < 100 MB. On CUDA
    (``--device cuda``) also each run's peak GPU memory.

Each run is a separate ``fedpet run`` process; figures come from its summary.json.
With ``--parallel K`` part (b)'s runs train K of a round's clients together.
Usage: python benchmarks/sim_overhead.py [--repeats 3] [--rounds 3] [--parts ab]
       [--algorithm fedavg] [--device auto] [--parallel 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def fedpet_run(out: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fedpet.cli", "run", "--out", str(out), "--overwrite", *args]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="ab", help="which measurements: a, b or ab")
    parser.add_argument("--algorithm", default="fedavg", help="the algorithm of part (b)")
    parser.add_argument("--device", default="auto", help="where every run trains")
    parser.add_argument(
        "--parallel", default="1", help="federation.parallel_clients of every run of part (b)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fedpet-bench-"))
    small_eval = ["--set", "data.max_eval_samples=64", "--dropout", "0", "--device", args.device]

    if "a" in args.parts:
        throughput(tmp, args.repeats, small_eval)
    if "b" in args.parts:
        together = ["--set", f"federation.parallel_clients={args.parallel}"]
        flat_memory(tmp, args.rounds, args.algorithm, [*small_eval, *together])


def throughput(tmp: Path, repeats: int, small_eval: list[str]) -> None:
    """(a) the same 320 examples: 10 clients x 32, all sampled, 1 local epoch; or 1 epoch."""
    same = ["--method", "lora", "--max-train-samples", "320", "--batch-size", "16", *small_eval]
    fed_rates, cen_rates = [], []
    for i in range(repeats):
        fed = fedpet_run(
            tmp / f"fed{i}",
            *same,
            "--clients",
            "10",
            "--clients-per-round",
            "10",
            "--rounds",
            "1",
            "--partition",
            "iid",
        )
        cen = fedpet_run(tmp / f"cen{i}", *same, "--centralized", "--epochs", "1")
        fed_rates.append(fed["train_examples_seen"] / fed["train_seconds"])
        cen_rates.append(cen["train_examples_seen"] / cen["train_seconds"])
    fed_rate, cen_rate = statistics.median(fed_rates), statistics.median(cen_rates)
    print(f"(a) training throughput, LoRA r8, 320 examples, batch 16 (median of {repeats})")
    print(f"    federated   (10 clients x 32, all per round): {fed_rate:7.1f} examples/s")
    print(f"    centralized (1 epoch)                        : {cen_rate:7.1f} examples/s")
    print(
        f"    ratio federated / centralized                : {fed_rate / cen_rate:7.3f}"
        "   (target >= 0.95)"
    )


def flat_memory(tmp: Path, rounds: int, algorithm: str, small_eval: list[str]) -> None:
    """(b) 10 vs 1,000 clients, 10 sampled per round, 10 examples per client."""
    sgd = ["--optimizer", "sgd", "--set", "train.max_grad_norm=null"]
    sgd = sgd if algorithm == "scaffold" else []
    rss, gpu = {}, {}
    for clients in (10, 1000):
        summary = fedpet_run(
            tmp / f"clients{clients}",
            "--method",
            "lora",
            "--clients",
            str(clients),
            "--clients-per-round",
            "10",
            "--max-train-samples",
            str(10 * clients),
            "--rounds",
            str(rounds),
            "--partition",
            "dirichlet",
            "--algorithm",
            algorithm,
            *sgd,
            *small_eval,
        )
        rss[clients] = summary["peak_rss_mb"]
        gpu[clients] = summary.get("peak_gpu_mb")
    print(
        f"(b) peak RSS, LoRA r8, {algorithm}, 10 clients x 10 examples per round, {rounds} rounds"
    )
    print(f"    10 clients   : {rss[10]:7.1f} MB")
    print(f"    1,000 clients: {rss[1000]:7.1f} MB")
    print(f"    difference   : {rss[1000] - rss[10]:7.1f} MB   (target < 100 MB)")
    if gpu[10] is not None and gpu[1000] is not None:
        print(f"    peak GPU memory, 10 clients   : {gpu[10]:7.1f} MB")
        print(f"    peak GPU memory, 1,000 clients: {gpu[1000]:7.1f} MB")


if __name__ == "__main__":
    main()
