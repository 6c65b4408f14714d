"""``results.csv``, ``report.md`` and the plots of a study, rendered from its saved files only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from fedpet.rundir import atomic_write
from fedpet.study.results import (
    data_setting,
    group_keys,
    mean_std,
    relative_to_baseline,
    run_row,
)
from fedpet.study.spec import PlannedRun

PLOTS = {
    "acc_vs_bytes.png": "test metric against total communicated MB (log scale)",
    "acc_vs_alpha.png": "test metric against the Dirichlet alpha",
    "convergence.png": "validation metric against round and against cumulative MB",
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
    done = results[results["status"] == "done"]
    plots = _plots(study_dir, done, runs) if len(done) else []
    text = render_markdown(results, plots)
    atomic_write(study_dir / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return ["results.csv", "report.md", *plots]


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _value(v: Any) -> str:
    """A grid value as written in the study file: a missing one (null) is ``none``."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def render_markdown(results: pd.DataFrame, plots: list[str]) -> str:
    """The report: per task a table of settings x methods, then communication, then plots."""
    done = results[results["status"] == "done"]
    lines = ["# Study report" if len(results) > 1 else "# Run report", ""]
    counts = results["status"].value_counts().to_dict()
    lines.append(
        f"{len(results)} runs planned: {counts.get('done', 0)} done, "
        f"{counts.get('partial', 0)} partial, {counts.get('pending', 0)} pending."
    )
    if done.empty:
        return "\n".join([*lines, ""])
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
    lines += ["## Plots", ""]
    lines += [f"- `{name}`: {PLOTS[name]}\n\n  ![{name}]({name})" for name in plots]
    return "\n".join([*lines, ""])


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


def _plots(study_dir: Path, done: pd.DataFrame, runs: list[Entry]) -> list[str]:
    written = []
    tasks = list(dict.fromkeys(done["task"]))
    federated = done[done["setting"] != "centralized"]
    if not federated.empty:
        federated = federated.assign(method=series_labels(federated))
        _by_task(
            study_dir / "acc_vs_bytes.png",
            tasks,
            plot_cells(federated, "mb_total", lines="setting"),
            "total MB (log)",
            log=True,
        )
        written.append("acc_vs_bytes.png")
        if federated["alpha"].nunique() > 1:
            cells = plot_cells(federated, "alpha", lines=None)
            _by_task(study_dir / "acc_vs_alpha.png", tasks, cells, "alpha (log)", log=True)
            written.append("acc_vs_alpha.png")
        curves = _curves(runs, federated)
        if curves:
            _convergence(study_dir / "convergence.png", curves)
            written.append("convergence.png")
        lora = {
            key: {label: f for label, f in methods.items() if f["lora_error"].notna().any()}
            for key, methods in curves.items()
        }
        lora = {key: methods for key, methods in lora.items() if methods}
        if lora:
            _lora_error(study_dir / "lora_error.png", lora)
            written.append("lora_error.png")
    for field in SCALE_FIELDS:
        if field in done.columns and done[field].nunique() > 1:
            cells = plot_cells(done.assign(method=series_labels(done)), field, lines="setting")
            _by_task(study_dir / "data_scale.png", tasks, cells, field, log=False)
            written.append("data_scale.png")
            break
    return written


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


def _by_task(path: Path, tasks: list[str], cells: pd.DataFrame, xlabel: str, log: bool) -> None:
    """One panel per task of :func:`plot_cells`' points, a line per series."""
    fig = Figure(figsize=(5 * len(tasks), 4))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    seeds = sorted(set(cells["n"]))
    for ax, task in zip(axes[0], tasks, strict=True):
        part = cells[cells["task"] == task]
        for label, line in part.groupby("series", sort=False):
            line = line.sort_values("x")
            ax.errorbar(
                line["x"], line["mean"], yerr=line["std"], marker="o", capsize=3, label=label
            )
        ax.set_xscale("log" if log else "linear")
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {cells['metric_name'].iloc[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    spread = (
        f"error bars: sample std over the {'/'.join(map(str, seeds))} seeds of each setting"
        if max(seeds) > 1
        else "one seed per setting: no error bars"
    )
    fig.suptitle(spread, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _curves(runs: list[Entry], done: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, setting) and method, seed means per round: validation metric, MB, LoRA error.

    Runs with an algorithm other than FedAvg are their own line, ``method + algorithm``.
    """
    names = set(done["run"])
    curves: dict[tuple[str, str], dict[str, Any]] = {}
    for run, run_dir in runs:
        if run.name not in names:
            continue
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        cfg = run.config
        metric = f"val_{done['metric_name'].iloc[0]}"
        frame = pd.DataFrame(
            {
                "round": [r["round"] for r in rows],
                "val": [r.get(metric, float("nan")) for r in rows],  # (not evaluated)
                "mb": pd.Series([r["bytes_up"] + r["bytes_down"] for r in rows]).cumsum() / 1e6,
                "lora_error": [r.get("lora_aggregation_error", float("nan")) for r in rows],
            }
        )
        key = (cfg.data.task, data_setting(cfg))
        algorithm = cfg.algorithm.name
        label = cfg.method.name + ("" if algorithm == "fedavg" else f" + {algorithm}")
        curves.setdefault(key, {}).setdefault(label, []).append(frame)
    return {
        key: {m: pd.concat(fs).groupby("round").mean() for m, fs in methods.items()}
        for key, methods in curves.items()
    }


def _convergence(path: Path, curves: dict[tuple[str, str], dict[str, Any]]) -> None:
    fig = Figure(figsize=(10, 3.2 * len(curves)))
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for (ax_round, ax_mb), ((task, setting), methods) in zip(axes, curves.items(), strict=True):
        for method, curve in methods.items():
            frame = curve.dropna(subset=["val"])  # the rounds evaluated (federation.eval_every)
            ax_round.plot(frame.index, frame["val"], marker=".", label=method)
            ax_mb.plot(frame["mb"], frame["val"], marker=".", label=method)
        ax_round.set_title(f"{task}, {setting}")
        ax_round.set_xlabel("round")
        ax_mb.set_xlabel("cumulative MB (log)")
        ax_mb.set_xscale("log")
        for ax in (ax_round, ax_mb):
            ax.set_ylabel("validation metric")
            ax.grid(alpha=0.3)
        ax_round.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _lora_error(path: Path, curves: dict[tuple[str, str], dict[str, Any]]) -> None:
    fig = Figure(figsize=(5, 3.2 * len(curves)))
    axes = fig.subplots(len(curves), 1, squeeze=False)
    for (ax,), ((task, setting), methods) in zip(axes, curves.items(), strict=True):
        for label, frame in methods.items():
            # an exact aggregation (FFA-LoRA) is 0 up to rounding: floored for the log axis
            ax.plot(frame.index, frame["lora_error"].clip(lower=1e-12), marker=".", label=label)
        ax.set_title(f"{task}, {setting}")
        ax.set_xlabel("round")
        ax.set_ylabel("relative error of averaged B A")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
