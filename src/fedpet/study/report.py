"""``results.csv``, ``report.md`` and the plots of a study, rendered from its saved files only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fedpet.files import atomic_write
from fedpet.study import plots
from fedpet.study.clients import client_scores, plot_clients, spread_table
from fedpet.study.curves import TARGET, Curves, Entry, curves, metric_of, to_target
from fedpet.study.results import (
    group_keys,
    mean_std,
    relative_to_baseline,
    run_row,
)

PLOTS = {
    "acc_vs_bytes.png": "test metric against total communicated MB (log scale; runs that "
    "send nothing, as the local baseline, are in the tables only)",
    "acc_vs_alpha.png": "test metric against the Dirichlet alpha",
    "convergence.png": "validation metric against round and against cumulative MB, and "
    "training loss against round (every run's metrics.jsonl, finished or not)",
    "data_scale.png": "test metric against the amount of training data",
    "lora_error.png": "LoRA aggregation error per round: how far averaging B and A separately "
    "is from averaging the products B A (log scale)",
    "aggregation_error.png": "aggregation error per round: how far the new global LoRA "
    "update is from the clients' mean update, in units of their mean step (log scale; "
    "exact rules at rounding level)",
    "clients.png": "every client's test metric on its own test split, global model (solid) "
    "and personal model (hatched), per method, algorithm and setting",
}
MAX_SERIES = 10  # lines a legend holds readably
SCALE_FIELDS = ("train_fraction", "max_train_samples")


def write_report(study_dir: Path, runs: list[Entry]) -> list[str]:
    """Write ``results.csv``, ``report.md`` and the plots that apply; their names."""
    results = with_algorithms(pd.DataFrame([run_row(run, run_dir) for run, run_dir in runs]), runs)
    atomic_write(study_dir / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    found = curves(runs)  # every run's metrics.jsonl, read once for the plots and targets
    drawn = _plots(study_dir, results, runs, found)
    text = render_markdown(results, drawn, to_target(found))
    atomic_write(study_dir / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return ["results.csv", "report.md", *drawn]


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _value(v: Any) -> str:
    """A grid value as written in the study file: a missing one (null) is ``none``."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def render_markdown(
    results: pd.DataFrame, drawn: list[str], targets: list[dict[str, Any]] | None = None
) -> str:
    """The report: per task a table of settings x methods, communication, target, plots.

    ``targets`` are :func:`fedpet.study.curves.to_target`'s rows (none: no such section).
    """
    done = results[results["status"] == "done"]
    lines = ["# Study report" if len(results) > 1 else "# Run report", ""]
    counts = results["status"].value_counts().to_dict()
    lines.append(
        f"{len(results)} runs planned: {counts.get('done', 0)} done, "
        f"{counts.get('partial', 0)} partial, {counts.get('pending', 0)} pending." + _wall(results)
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
    lines += spread_table(results)
    lines += _communication(done, extra)
    lines += _targets(targets or [], metric)
    return "\n".join([*lines, *_plot_lines(drawn), ""])


def with_algorithms(results: pd.DataFrame, runs: list[Entry]) -> pd.DataFrame:
    """``results`` with every federated run's algorithm where some run varies it.

    A grid axis may set the algorithm in some of its entries only (a rule axis that sets
    the method in another): those runs use the config's algorithm, which their rows name.
    """
    if "algorithm" not in results:
        return results
    used = [None if run.config.centralized else run.config.algorithm.name for run, _ in runs]
    return results.assign(algorithm=results["algorithm"].fillna(pd.Series(used)))


def _plot_lines(drawn: list[str]) -> list[str]:
    if not drawn:
        return []
    return ["## Plots", "", *(f"- `{n}`: {PLOTS[n]}\n\n  ![{n}]({n})" for n in drawn)]


def _wall(results: pd.DataFrame) -> str:
    """The finished runs' wall time, summed, as a sentence (nothing when none finished)."""
    if "wall_seconds" not in results or results["wall_seconds"].isna().all():
        return ""
    seconds = round(float(results["wall_seconds"].sum()))
    hours, rest = divmod(seconds, 3600)
    clock = f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
    done = results[results["status"] == "done"]
    dp = " (runs under DP withhold theirs)" if done["wall_seconds"].isna().any() else ""
    return f" The finished runs took {clock} of wall time ({seconds:,} s), one after another{dp}."


def _communication(done: pd.DataFrame, extra: list[str]) -> list[str]:
    """Bytes per method, split by the other grid fields only where they change them."""
    federated = done[done["setting"] != "centralized"]
    if federated.empty:
        return []
    by = [
        c
        for c in extra
        if federated.groupby(["method", c], dropna=False)["mb_total"]
        .mean()
        .groupby("method")
        .nunique()
        .max()
        > 1
    ]
    per = federated.groupby(["method", *by], sort=False, dropna=False).agg(
        params=("trainable_params", "first"),
        per_round=("mb_per_round", "mean"),
        total=("mb_total", "mean"),
    )
    per = per.reset_index()
    lines = [
        "## Communication",
        "",
        "Measured payload bytes, up + down, all clients; per round and per run (mean over runs).",
        "",
        "| " + " | ".join(["method", *by]) + " | trainable params | MB per round | MB per run "
        "| % of FedFT |",
        "|---" * (len(by) + 5) + "|",
    ]
    for _, r in per.iterrows():
        same = per[per["method"] == "full"]
        for c in by:
            same = same[same[c] == r[c]]
        base = float(same["total"].iloc[0]) if len(same) else math.nan
        # (none where FedFT sent nothing: the local baseline)
        rel = "-" if math.isnan(base) or base == 0 else f"{100 * r['total'] / base:.2f}%"
        figures = f"{int(r['params']):,} | {r['per_round']:,.2f} | {r['total']:,.1f}"
        keys = " | ".join([str(r["method"]), *(_value(r[c]) for c in by)])
        lines.append(f"| {keys} | {figures} | {rel} |")
    return [*lines, ""]


def _targets(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Rounds and MB each line took to reach the target, per task and setting."""
    if not rows:
        return []
    lines = [
        f"## Rounds and MB to {100 * TARGET:.0f}% of FedFT",
        "",
        f"Target: {100 * TARGET:.0f}% of federated full fine-tuning's final validation {metric} "
        "(seed means) in the same setting. A cell is the first evaluated round whose seed-mean "
        "validation metric reaches it, and the MB sent up to then; `not reached` gives the best.",
        "",
        "| task | setting | line | target | round | MB to target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["round"] is None:
            reached = f"not reached (best {100 * r['best']:.2f}) | -"
        else:
            mb = "withheld (DP)" if math.isnan(r["mb"]) else f"{r['mb']:,.1f}"
            reached = f"{r['round']} | {mb}"
        lines.append(
            f"| {r['task']} | {r['setting']} | {r['line']} | {100 * r['target']:.2f} | {reached} |"
        )
    return [*lines, ""]


def _plots(study_dir: Path, results: pd.DataFrame, runs: list[Entry], found: Curves) -> list[str]:
    """Draw the plots that apply to the runs' results (done or not); their names.

    ``found``: the runs' seed-mean curves (:func:`fedpet.study.curves.curves`).
    """
    written = []
    done = results[results["status"] == "done"]
    tasks = list(dict.fromkeys(done["task"]))
    federated = done[done["setting"] != "centralized"]
    if not federated.empty:
        refs, majority = _centralized(done), _majority(done)
        federated = federated.assign(method=series_labels(federated))
        # a run that sends nothing (the local baseline) has no place on a log axis of MB
        cells = plot_cells(federated[federated["mb_total"] > 0], "mb_total", lines="setting")
        # past a legend's worth of method x setting lines: a line per setting across the
        # methods, each method named at its bytes (the centralized references are in
        # acc_vs_alpha and the tables)
        many = cells["series"].nunique() > MAX_SERIES and cells["setting"].nunique() > 1
        plots.by_task(
            study_dir / "acc_vs_bytes.png",
            tasks,
            cells.assign(series=cells["setting"]) if many else cells,
            "total MB, up + down (log)",
            log=True,
            refs=None if many else refs,
            majority=majority,
            at_values=False,
            named=many,
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
    if found:
        metric = metric_of(runs)
        plots.convergence(study_dir / "convergence.png", found, metric)
        written.append("convergence.png")
        for column in plots.ERRORS:
            logged = {
                key: {label: f for label, f in series.items() if f[column].notna().any()}
                for key, series in found.items()
            }
            logged = {key: series for key, series in logged.items() if series}
            if logged:
                plots.lora_error(study_dir / f"{column}.png", logged, column)
                written.append(f"{column}.png")
    scores = client_scores(runs, metric_of(runs))
    if not scores.empty:
        plot_clients(study_dir / "clients.png", scores, metric_of(runs))
        written.append("clients.png")
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


def plot_cells(rows: pd.DataFrame, x: str, lines: str | None) -> pd.DataFrame:
    """The points of a plot: one per cell, the runs that differ only in their seed.

    A point lies at the cell's mean of ``x`` and holds its test metric's mean, sample std
    and number of seeds. Its ``series`` (its line) is its method label, with the value of
    the ``lines`` column where that varies; the std is over the seeds of that one cell,
    never over settings, and is 0 (no error bar) for one seed.
    """
    keys = group_keys(rows)  # with x where it is a grid field: a point per value of x
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
