"""``results.csv``, ``report.md`` and the plots of a study, rendered from its saved files only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from fedpet.rundir import atomic_write
from fedpet.study import plots
from fedpet.study.results import (
    data_setting,
    group_keys,
    mean_std,
    relative_to_baseline,
    run_row,
    short,
)
from fedpet.study.spec import PlannedRun

PLOTS = {
    "acc_vs_bytes.png": "test metric against total communicated MB (log scale)",
    "acc_vs_alpha.png": "test metric against the Dirichlet alpha",
    "convergence.png": "validation metric against round and against cumulative MB, and "
    "training loss against round (every run's metrics.jsonl, finished or not)",
    "data_scale.png": "test metric against the amount of training data",
    "lora_error.png": "LoRA aggregation error per round: how far averaging B and A separately "
    "is from averaging the products B A (log scale)",
}
SCALE_FIELDS = ("train_fraction", "max_train_samples")


Entry = tuple[PlannedRun, Path]  # a planned run and its directory


def write_report(study_dir: Path, runs: list[Entry]) -> list[str]:
    """Write ``results.csv``, ``report.md`` and the plots that apply; their names."""
    results = pd.DataFrame([run_row(run, run_dir) for run, run_dir in runs])
    atomic_write(study_dir / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    drawn = _plots(study_dir, results, runs)
    text = render_markdown(results, drawn)
    atomic_write(study_dir / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return ["results.csv", "report.md", *drawn]


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _value(v: Any) -> str:
    """A grid value as written in the study file: a missing one (null) is ``none``."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def render_markdown(results: pd.DataFrame, drawn: list[str]) -> str:
    """The report: per task a table of settings x methods, then communication, then plots."""
    done = results[results["status"] == "done"]
    lines = ["# Study report" if len(results) > 1 else "# Run report", ""]
    counts = results["status"].value_counts().to_dict()
    lines.append(
        f"{len(results)} runs planned: {counts.get('done', 0)} done, "
        f"{counts.get('partial', 0)} partial, {counts.get('pending', 0)} pending."
    )
    if done.empty:
        return "\n".join([*lines, "", *_plot_lines(drawn), ""])
    metric = str(done["metric_name"].iloc[0])
    lines += [
        "",
        f"Cells: test {metric} (x100) at the best validation round, mean ± std over seeds "
        "(sample std, where a cell has more than one seed; n seeds in brackets when not all "
        "cells have the same), and in % of federated full fine-tuning (FedFT) in the same "
        "setting.",
        "",
    ]
    table = mean_std(results)
    table["rel"] = relative_to_baseline(table)
    methods = list(dict.fromkeys(done["method"]))
    extra = [
        c
        for c in table.columns
        if c not in ("task", "setting", "method", "mean", "std", "n", "rel")
    ]
    same_n = table["n"].nunique() == 1
    for keys, part in table.groupby(["task", *extra], dropna=False, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        title = ", ".join(
            [str(keys[0]), *(f"{c}={_value(v)}" for c, v in zip(extra, keys[1:], strict=True))]
        )
        lines += [f"## {title}", "", "| setting | " + " | ".join(methods) + " |"]
        lines.append("|---" * (len(methods) + 1) + "|")
        for setting, rows in part.groupby("setting", sort=False):
            cells = []
            for method in methods:
                row = rows[rows["method"] == method]
                if row.empty:
                    cells.append("-")
                    continue
                r = row.iloc[0]
                # a spread only where there are seeds to spread over
                cell = _pct(r["mean"]) + (f" ± {_pct(r['std'])}" if r["n"] > 1 else "")
                cell += "" if same_n else f" [{int(r['n'])}]"
                if method != "full" and not math.isnan(r["rel"]):
                    cell += f" ({r['rel']:.1f}%)"
                cells.append(cell)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _communication(done)
    return "\n".join([*lines, *_plot_lines(drawn), ""])


def _plot_lines(drawn: list[str]) -> list[str]:
    if not drawn:
        return []
    return ["## Plots", "", *(f"- `{n}`: {PLOTS[n]}\n\n  ![{n}]({n})" for n in drawn)]


def _communication(done: pd.DataFrame) -> list[str]:
    federated = done[done["setting"] != "centralized"]
    if federated.empty:
        return []
    per = federated.groupby("method", sort=False).agg(
        params=("trainable_params", "first"),
        per_round=("mb_per_round", "mean"),
        total=("mb_total", "mean"),
    )
    base = per["total"].get("full", float("nan"))
    lines = [
        "## Communication",
        "",
        "Measured payload bytes, up + down, all clients; per round and per run (mean over runs).",
        "",
        "| method | trainable params | MB per round | MB per run | % of FedFT |",
        "|---|---|---|---|---|",
    ]
    for method, r in per.iterrows():
        rel = "-" if math.isnan(base) else f"{100 * r['total'] / base:.2f}%"
        figures = f"{int(r['params']):,} | {r['per_round']:,.2f} | {r['total']:,.1f}"
        lines.append(f"| {method} | {figures} | {rel} |")
    return [*lines, ""]


def _plots(study_dir: Path, results: pd.DataFrame, runs: list[Entry]) -> list[str]:
    """Draw the plots that apply to the runs' results (done or not); their names."""
    written = []
    done = results[results["status"] == "done"]
    tasks = list(dict.fromkeys(done["task"]))
    federated = done[done["setting"] != "centralized"]
    if not federated.empty:
        refs, majority = _centralized(done), _majority(done)
        federated = federated.assign(method=series_labels(federated))
        plots.by_task(
            study_dir / "acc_vs_bytes.png",
            tasks,
            plot_cells(federated, "mb_total", lines="setting"),
            "total MB, up + down (log)",
            log=True,
            refs=refs,
            majority=majority,
            at_values=False,
        )
        written.append("acc_vs_bytes.png")
        if federated["alpha"].nunique() > 1:
            cells = plot_cells(federated, "alpha", lines=None)
            plots.by_task(
                study_dir / "acc_vs_alpha.png",
                tasks,
                cells,
                "Dirichlet alpha (log)",
                log=True,
                refs=refs,
                majority=majority,
            )
            written.append("acc_vs_alpha.png")
    curves = _curves(runs, results)
    if curves:
        metric = _metric(runs)
        plots.convergence(study_dir / "convergence.png", curves, metric)
        written.append("convergence.png")
        lora = {
            key: {label: f for label, f in series.items() if f["lora_error"].notna().any()}
            for key, series in curves.items()
        }
        lora = {key: series for key, series in lora.items() if series}
        if lora:
            plots.lora_error(study_dir / "lora_error.png", lora)
            written.append("lora_error.png")
    for field in SCALE_FIELDS:
        if field in done.columns and done[field].nunique() > 1:
            cells = plot_cells(done.assign(method=series_labels(done)), field, lines="setting")
            name = "fraction of the training set" if field == "train_fraction" else field
            plots.by_task(
                study_dir / "data_scale.png",
                tasks,
                cells,
                name,
                log=False,
                majority=_majority(done),
            )
            written.append("data_scale.png")
            break
    return written


def _centralized(done: pd.DataFrame) -> pd.DataFrame:
    """The centralized runs' test metric per task and method (mean over seeds)."""
    central = done[done["setting"] == "centralized"]
    return (
        central.groupby(["task", "method"], sort=False)["test_metric"]
        .mean()
        .rename("mean")
        .reset_index()
    )


def _majority(done: pd.DataFrame) -> dict[str, float]:
    """Per task, the test accuracy of always predicting the most frequent label.

    Only where the metric is accuracy (a majority line means nothing for MCC).
    """
    if "test_majority" not in done or done["metric_name"].iloc[0] != "accuracy":
        return {}
    known = done.dropna(subset=["test_majority"])
    return {str(t): float(v) for t, v in known.groupby("task")["test_majority"].first().items()}


def _metric(runs: list[Entry]) -> str:
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


def plot_cells(rows: pd.DataFrame, x: str, lines: str | None) -> pd.DataFrame:
    """The points of a plot: one per cell, the runs that differ only in their seed.

    A point lies at the cell's mean of ``x`` and holds its test metric's mean, sample std
    and number of seeds. Its ``series`` (its line) is its method label, with the value of
    the ``lines`` column where that varies; the std is over the seeds of that one cell,
    never over settings, and is 0 (no error bar) for one seed.
    """
    keys = [k for k in group_keys(rows) if k != x]
    cells = (
        rows.groupby(keys, dropna=False, sort=False)
        .agg(
            x=(x, "mean"),
            mean=("test_metric", "mean"),
            std=("test_metric", "std"),
            n=("test_metric", "count"),
        )
        .reset_index()
    )
    cells["std"] = cells["std"].fillna(0.0)
    series = cells["method"].astype(str)
    if lines is not None and cells[lines].nunique() > 1:
        series = series + ", " + cells[lines].astype(str)
    return cells.assign(series=series, metric_name=rows["metric_name"].iloc[0])


def series_labels(rows: pd.DataFrame) -> pd.Series:
    """Each run's line in the plots: its method, and algorithm and codecs where they vary."""
    label = rows["method"].astype(str)
    if "algorithm" in rows and rows["algorithm"].nunique() > 1:
        label = label + " + " + rows["algorithm"].astype(str)
    for key in ("codec_up", "codec_down"):
        if rows[key].nunique() > 1:
            label = label + f" {key.removeprefix('codec_')}=" + rows[key].astype(str)
    return label


def _curves(runs: list[Entry], results: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, setting) and line, seed means per round: validation metric, MB, loss, error.

    Every run with a ``metrics.jsonl`` counts, finished or not. A line is a method, with
    its algorithm where not FedAvg, and the other grid values that tell runs apart
    (seeds are averaged over).
    """
    metric = f"val_{_metric(runs)}"
    curves: dict[tuple[str, str], dict[str, Any]] = {}
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
                "mb": pd.Series([r["bytes_up"] + r["bytes_down"] for r in rows]).cumsum() / 1e6,
                "loss": [r.get("train_loss", float("nan")) for r in rows],
                "lora_error": [r.get("lora_aggregation_error", float("nan")) for r in rows],
            }
        )
        key = (cfg.data.task, data_setting(cfg))
        curves.setdefault(key, {}).setdefault(line_label(run), []).append(frame)
    return {
        key: {m: pd.concat(fs).groupby("round").mean() for m, fs in series.items()}
        for key, series in curves.items()
    }


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
