"""The FL algorithms side by side under label skew, on LoRA and the sentiment tasks.

Runs the ``algorithms`` study preset (every algorithm, rotten_tomatoes and tweet_sentiment,
alpha 0.1 and 1, ten clients, three seeds) and FedRS (``algorithm.fedrs``) on FedAvg as a
second study, then prints per task and alpha, per algorithm:

- the test metric, mean +- std over the seeds;
- rounds to reach FedAvg's final validation metric of the same seed: the mean over the
  seeds that reach it, and how many do (``-`` where none does);
- the total MB on the wire (up and down) of one run, mean over the seeds.

The studies are resumable: run the same command again to continue. Flags shrink the
budget of every run (the preset's own sizes take hours on a CPU).
Usage: python benchmarks/algorithms.py [--out studies/algorithms] [--train-samples 2000]
       [--eval-samples 500] [--rounds 10] [--seeds 3] [--tasks T ...] [--algorithms A ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedpet.config import with_overrides
from fedpet.study.runner import run_study
from fedpet.study.spec import Study, load_study, plan

FEDRS = 0.5  # FedRS's factor on the logits of a client's missing classes


def studies(args: argparse.Namespace) -> dict[str, Study]:
    """The preset at the requested budget, and FedAvg + FedRS on the same grid."""
    preset = load_study(preset="algorithms")
    base = with_overrides(
        preset.base,
        [
            ("data.max_train_samples", args.train_samples),
            ("data.max_eval_samples", args.eval_samples),
            ("federation.rounds", args.rounds),
        ],
    )
    grid = {**preset.grid, "seed": list(range(args.seeds))}
    for key, wanted in (("data.task", args.tasks), ("algorithm.name", args.algorithms)):
        if wanted:
            grid[key] = [v for v in grid[key] if v in wanted]
    main = dataclasses.replace(preset, base=base, grid=grid)
    fedrs_grid = {k: v for k, v in grid.items() if k != "algorithm.name"}
    fedrs = Study(base, {**fedrs_grid, "algorithm.fedrs": [FEDRS]}, [], None)
    if args.algorithms and "fedrs" not in args.algorithms:
        return {"main": main}
    return {"main": main, "fedrs": fedrs}


def collect(out: Path, all_studies: dict[str, Study]) -> list[dict[str, Any]]:
    """One record per finished run: its arm, task, alpha, seed, figures and curve."""
    records = []
    for key, study in all_studies.items():
        for run in plan(study):
            run_dir = out / key / "runs" / run.name
            if not (run_dir / "summary.json").exists():
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            cfg = run.config
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            metric = summary["metric_name"]
            arm = cfg.algorithm.name if key == "main" else f"fedavg+fedrs({FEDRS:g})"
            records.append(
                {
                    "arm": arm,
                    "task": cfg.data.task,
                    "alpha": cfg.data.alpha,
                    "seed": cfg.seed,
                    "metric": metric,
                    "test": summary["test_metric"],
                    "mb": (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6,
                    "curve": [r[f"val_{metric}"] for r in rows],
                }
            )
    return records


def rounds_to_reach(curve: list[float], target: float) -> int | None:
    """The first round (1-based) whose validation metric is at least ``target``."""
    return next((i for i, v in enumerate(curve, 1) if v >= target), None)


def table(records: list[dict[str, Any]]) -> str:
    """The comparison, one block per task and alpha, one line per algorithm."""
    lines = []
    settings = sorted({(r["task"], r["alpha"]) for r in records})
    for task, alpha in settings:
        here = [r for r in records if r["task"] == task and r["alpha"] == alpha]
        target = {r["seed"]: r["curve"][-1] for r in here if r["arm"] == "fedavg"}
        metric = here[0]["metric"]
        lines.append(f"\n{task}, alpha {alpha:g} (test {metric}; rounds to FedAvg's final val)")
        lines.append(f"{'algorithm':<20} {'test mean +- std':>17} {'rounds':>12} {'MB/run':>9}")
        for arm in dict.fromkeys(r["arm"] for r in here):
            mine = [r for r in here if r["arm"] == arm]
            tests = [r["test"] for r in mine]
            std = statistics.stdev(tests) if len(tests) > 1 else 0.0
            reached = [
                n
                for r in mine
                if r["seed"] in target
                and (n := rounds_to_reach(r["curve"], target[r["seed"]])) is not None
            ]
            rounds = (
                f"{statistics.mean(reached):.1f} ({len(reached)}/{len(mine)})" if reached else "-"
            )
            mb = statistics.mean(r["mb"] for r in mine)
            lines.append(
                f"{arm:<20} {statistics.mean(tests):>8.4f} +- {std:.4f} {rounds:>12} {mb:>9.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("studies/algorithms"))
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", help="only these of the preset's tasks")
    parser.add_argument(
        "--algorithms", nargs="*", help="only these of its algorithms (fedrs: the FedRS arm)"
    )
    args = parser.parse_args()
    all_studies = studies(args)
    for key, study in all_studies.items():
        run_study(study, args.out / key)
    print(table(collect(args.out, all_studies)))


if __name__ == "__main__":
    main()
