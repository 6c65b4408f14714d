"""Validation curves of a study's runs, averaged over seeds, and when each line reaches a target.

Read from each run's ``metrics.jsonl``, finished or not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from fedpet.study.results import BASELINE, data_setting, short
from fedpet.study.spec import PlannedRun

Entry = tuple[PlannedRun, Path]  # a planned run and its directory
Curves = dict[tuple[str, str], dict[str, pd.DataFrame]]
TARGET = 0.95  # of FedFT's final validation metric


def metric_of(runs: list[Entry]) -> str:
    """The runs' metric name (their config's task decides it; accuracy unless given)."""
    for _, run_dir in runs:
        summary = run_dir / "summary.json"
        if summary.exists():
            return str(json.loads(summary.read_text(encoding="utf-8"))["metric_name"])
    for _, run_dir in runs:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                found = [k for k in json.loads(line) if k.startswith("val_")]
                if found:
                    return "mcc" if "val_mcc" in found and len(found) == 1 else "accuracy"
    return "accuracy"


def curves(runs: list[Entry]) -> Curves:
    """Per (task, setting) and line, seed means per round: validation metric, MB, loss, error.

    Every run with a ``metrics.jsonl`` counts, finished or not. A line is a method, with
    its algorithm where not FedAvg, and the other grid values that tell runs apart
    (seeds are averaged over).
    """
    metric = f"val_{metric_of(runs)}"
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for run, run_dir in runs:
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
        if not rows:
            continue
        cfg = run.config
        frame = pd.DataFrame(
            {
                "round": [r["round"] for r in rows],
                "val": [r.get(metric, float("nan")) for r in rows],  # (not evaluated)
                "mb": pd.Series([_sent(r) for r in rows]).cumsum() / 1e6,
                "loss": [r.get("train_loss", float("nan")) for r in rows],
                "lora_error": [r.get("lora_aggregation_error", float("nan")) for r in rows],
                "aggregation_error": [r.get("aggregation_error", float("nan")) for r in rows],
            }
        )
        key = (cfg.data.task, data_setting(cfg))
        found.setdefault(key, {}).setdefault(line_label(run), []).append(frame)
    return {
        key: {m: pd.concat(fs).groupby("round").mean() for m, fs in series.items()}
        for key, series in found.items()
    }


def _sent(row: dict[str, Any]) -> float:
    """A round's bytes, up and down; NaN where a DP run withholds them."""
    return float(row.get("bytes_up", math.nan) + row.get("bytes_down", math.nan))


LINE_SKIP = ("data.task", "data.alpha", "data.partition", "seed", "centralized", "method.name")


def line_label(run: PlannedRun) -> str:
    """A run's line: method, algorithm (unless FedAvg), then the other values it varies."""
    cfg = run.config
    algorithm = cfg.algorithm.name
    label = cfg.method.name + (
        "" if cfg.centralized or algorithm == "fedavg" else f" + {algorithm}"
    )
    others = [
        f"{short(k)}={v}"
        for k, v in run.varied.items()
        if k not in LINE_SKIP and k != "algorithm.name"
    ]
    return ", ".join([label, *others])


def to_target(found: Curves, fraction: float = TARGET) -> list[dict[str, Any]]:
    """Per federated line: the first evaluated round at ``fraction`` of FedFT's final metric.

    The target is ``fraction`` times the last validation value of the seed-mean FedFT
    curve with the same task, setting and other grid values; a line reaches it at the first
    evaluated round whose seed-mean validation value is at least the target, having sent
    the cumulative MB (up + down) of that round. Lines without a FedFT counterpart, and
    centralized ones, are left out.
    """
    rows: list[dict[str, Any]] = []
    for (task, setting), series in found.items():
        if setting == "centralized":
            continue
        for label, frame in series.items():
            head, _, rest = label.partition(", ")
            method = head.split(" + ", 1)[0]
            counterpart = BASELINE + head[len(method) :] + (f", {rest}" if rest else "")
            base = series.get(counterpart)
            if base is None or base["val"].dropna().empty:
                continue
            target = fraction * float(base["val"].dropna().iloc[-1])
            evaluated = frame.dropna(subset=["val"])
            reached = evaluated[evaluated["val"] >= target]
            first = reached.index[0] if len(reached) else None
            rows.append(
                {
                    "task": task,
                    "setting": setting,
                    "line": label,
                    "method": method,
                    "target": target,
                    "round": None if first is None else int(first),
                    "mb": None if first is None else float(frame.loc[first, "mb"]),
                    "best": float(evaluated["val"].max()) if len(evaluated) else math.nan,
                }
            )
    return rows
