"""The figures of a study's runs: one row per run, and their means over seeds.

Pure functions over pandas frames; the report renders what they return.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedpet.config import Config
from fedpet.data.partition import ALPHA_PARTITIONS
from fedpet.runtime.client_tests import spread
from fedpet.study.spec import SHORT_NAMES, PlannedRun

FIGURES = (
    "test_metric",
    "test_accuracy",
    "test_macro_f1",
    "best_val_metric",
    "best_round",
    "rounds_completed",
    "bytes_up_total",
    "bytes_down_total",
    "trainable_params",
    "train_seconds",
    "wall_seconds",
    "peak_rss_mb",
    "codec_up",
    "codec_down",
    *(
        f"{model}_test_{s}"
        for model in ("client", "personal", "majority")
        for s in ("mean", "p10", "worst")
    ),
)
BASELINE = "full"  # relative figures are against federated full fine-tuning (FedFT)


def short(field: str) -> str:
    """The column name of a dotted config field (its last part, or a fixed short name)."""
    return SHORT_NAMES.get(field, field.rsplit(".", 1)[-1])


def data_setting(cfg: Config) -> str:
    """How a run's data is spread: its row's name in the report's tables.

    ``centralized``; ``alpha=x`` for the Dirichlet partition; ``quantity alpha=x`` for
    another alpha partition; else the partition's name (``iid``).
    """
    if cfg.centralized:
        return "centralized"
    if cfg.data.partition == "dirichlet":
        return f"alpha={cfg.data.alpha:g}"
    if cfg.data.partition in ALPHA_PARTITIONS:
        return f"{cfg.data.partition} alpha={cfg.data.alpha:g}"
    return cfg.data.partition


def _has_alpha(cfg: Config) -> bool:
    return not cfg.centralized and cfg.data.partition in ALPHA_PARTITIONS


def run_row(run: PlannedRun, run_dir: Path) -> dict[str, Any]:
    """One row of ``results.csv``: the run's grid values, setting and figures (if finished)."""
    cfg = run.config
    row: dict[str, Any] = {
        "run": run.name,
        "task": cfg.data.task,
        "method": cfg.method.name,
        "setting": data_setting(cfg),
        # alpha only where the partition has one (iid, shards, natural: none)
        "alpha": cfg.data.alpha if _has_alpha(cfg) else None,
        "seed": cfg.seed,
    }
    row.update(
        {short(k): v for k, v in run.varied.items() if short(k) not in (*row, "centralized")}
    )
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        row["status"] = "partial" if (run_dir / "checkpoint" / "state.json").exists() else "pending"
        return row
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    row["status"] = "done"
    row["metric_name"] = summary["metric_name"]
    # a DP run withholds its byte totals and times (fedpet.privacy.release): left empty
    row.update({k: summary.get(k) for k in FIGURES})
    row["test_majority"] = summary.get("test_majority")  # absent from older runs
    if "bytes_up_total" in summary:
        total_mb = (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6
        row["mb_total"] = total_mb
        row["mb_per_round"] = total_mb / max(1, summary["rounds_completed"])
    if summary.get("client_test_mean") is not None and summary["metric_name"] == "accuracy":
        row.update(majority_figures(run_dir / "partition.json"))
    return row


def majority_figures(partition: Path) -> dict[str, float]:
    """``majority_test_*``: each client predicting its most frequent training label.

    The accuracy a client gets on its local test split without any model, from the label
    counts ``partition.json`` records: what a personal model must beat under label skew.
    Spread over clients as ``client_test_*`` is (mean, 10th percentile, worst).
    """
    clients = json.loads(partition.read_text(encoding="utf-8"))["clients"]
    hits = [c["test_label_counts"][int(np.argmax(c["label_counts"]))] for c in clients]
    shares = [h / c["test_size"] for h, c in zip(hits, clients, strict=True)]
    return {f"majority_test_{k}": v for k, v in spread(shares).items()}


def group_keys(results: pd.DataFrame) -> list[str]:
    """What distinguishes a table cell: task, setting, method and any other grid field.

    Seeds are what a cell averages over.
    """
    # the setting already names the partition and its alpha
    fixed = ["run", "seed", "status", "alpha", "partition", "metric_name", "mb_total"]
    fixed += ["mb_per_round"]
    fixed += ["test_majority"]
    fixed += list(FIGURES)
    return [c for c in results.columns if c not in fixed]


def mean_std(results: pd.DataFrame, value: str = "test_metric") -> pd.DataFrame:
    """Mean, sample standard deviation (0 for one seed) and count of ``value`` per cell."""
    done = results[results["status"] == "done"]
    keys = group_keys(results)
    grouped = done.groupby(keys, dropna=False, sort=False)[value]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["std"] = table["std"].fillna(0.0)
    return table


def relative_to_baseline(table: pd.DataFrame) -> pd.Series:
    """Each cell's mean in % of the FedFT cell that differs from it only in the method.

    NaN where the study has no such FedFT cell.
    """
    keys = [c for c in table.columns if c not in ("method", "mean", "std", "n")]
    base = table[table["method"] == BASELINE][[*keys, "mean"]].rename(columns={"mean": "base"})
    merged = (
        table.merge(base, on=keys, how="left")
        if keys
        else table.assign(base=float(base["base"].iloc[0]) if len(base) else float("nan"))
    )
    return 100.0 * merged["mean"] / merged["base"]
