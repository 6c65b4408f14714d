"""How every client fares: the per-client figures of a study with local test splits.

Read from each finished run's ``clients.csv`` (the final state's scores on every client's
local test split) and the ``client_test_*`` and ``personal_test_*`` figures of its summary:
a table of their mean, 10th percentile and worst client per cell, and box plots of every
client's metric per method, algorithm and setting, global model beside personal model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fedpet.study.curves import Entry
from fedpet.study.plots import COLORS, save
from fedpet.study.results import data_setting

MODELS = {"client_test": "global", "personal_test": "personal", "majority_test": "majority"}
"""The prefix of each model's figures, and the model's name in the report: the global model,
each client's personal model, and no model at all (each client predicting its most frequent
training label, where the metric is accuracy)."""
STATS = ("mean", "p10", "worst")


def client_scores(runs: list[Entry], metric: str) -> pd.DataFrame:
    """One row per client per finished run with local tests: its cell, model and metric."""
    frames = []
    for run, run_dir in runs:
        scored = run_dir / "clients.csv"
        if not (run_dir / "summary.json").exists() or not scored.exists():
            continue
        cfg = run.config
        table = pd.read_csv(scored)
        for model in ("global", "personal"):
            values = table[f"{model}_{metric}"].dropna()
            frames.append(
                pd.DataFrame(
                    {
                        "task": cfg.data.task,
                        "method": cfg.method.name,
                        "algorithm": cfg.algorithm.name,
                        "setting": data_setting(cfg),
                        "seed": cfg.seed,
                        "model": model,
                        "value": values.astype(float),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def spread_table(results: pd.DataFrame) -> list[str]:
    """The report's section: mean, p10 and worst client per cell, mean ± std over seeds."""
    done = results[results["status"] == "done"]
    if "client_test_mean" not in done or done["client_test_mean"].isna().all():
        return []
    keys = ["task", "setting", "method", "algorithm"]
    keys = [k for k in keys if k in done]
    lines = [
        "## How every client fares",
        "",
        "The final state on each client's own test split (`data.client_test_fraction`): the "
        "unweighted mean over clients, the 10th percentile and the worst client, for the "
        "global model, each client's personal model and, as the floor a personal model must "
        "beat, each client predicting its most frequent training label (majority, for "
        "accuracy); x100, mean ± std over seeds.",
        "",
        "| "
        + " | ".join(keys)
        + " | "
        + " | ".join(f"{model} {s}" for model in MODELS.values() for s in STATS)
        + " |",
        "|---" * (len(keys) + 2 * len(STATS)) + "|",
    ]
    for cell, rows in done.groupby(keys, sort=False, dropna=False):
        cells = []
        for prefix in MODELS:
            for s in STATS:
                v = rows[f"{prefix}_{s}"].dropna() if f"{prefix}_{s}" in rows else pd.Series()
                spread = f" ± {100 * v.std():.1f}" if len(v) > 1 else ""
                cells.append("-" if v.empty else f"{100 * v.mean():.1f}{spread}")
        shown = cell if isinstance(cell, tuple) else (cell,)
        lines.append("| " + " | ".join(map(str, (*shown, *cells))) + " |")
    return [*lines, ""]


def plot_clients(path: Path, scores: pd.DataFrame, metric: str) -> None:
    """Box plots of every client's metric (seeds pooled), whiskers at the best and worst.

    A panel per task and method; along x the settings, and in each a box per algorithm
    and model: solid for the global model, hatched for the personal one.
    """
    panels = list(scores.groupby(["task", "method"], sort=False))
    algorithms = list(dict.fromkeys(scores["algorithm"]))
    settings = list(dict.fromkeys(scores["setting"]))
    boxes = [(a, m) for a in algorithms for m in ("global", "personal")]
    fig = Figure(figsize=(1.2 + 0.32 * len(boxes) * len(settings), 3.4 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(boxes)
    for ax, ((task, method), part) in zip(axes, panels, strict=True):
        for i, (algorithm, model) in enumerate(boxes):
            mine = part[(part["algorithm"] == algorithm) & (part["model"] == model)]
            data, at = [], []
            for j, setting in enumerate(settings):
                values = mine[mine["setting"] == setting]["value"]
                if not values.empty:
                    data.append(values.to_numpy())
                    at.append(j - 0.4 + width * (i + 0.5))
            if not data:
                continue
            drawn = ax.boxplot(
                data,
                positions=at,
                widths=width * 0.85,
                whis=(0, 100),
                patch_artist=True,
                manage_ticks=False,
            )
            color = COLORS[algorithms.index(algorithm) % len(COLORS)]
            for box in drawn["boxes"]:
                box.set(
                    facecolor=color,
                    alpha=0.55 if model == "global" else 0.25,
                    hatch="" if model == "global" else "///",
                )
            for median in drawn["medians"]:
                median.set(color="black")
        ax.set_xticks(np.arange(len(settings)), settings)
        ax.set_xlim(-0.5, len(settings) - 0.5)
        ax.set_title(f"{task}, {method}")
        ax.set_ylabel(f"client test {metric}")
        ax.grid(alpha=0.3, axis="y")
    legend = [
        Patch(facecolor=COLORS[i % len(COLORS)], alpha=0.55, label=a)
        for i, a in enumerate(algorithms)
    ]
    legend.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="personal"))
    axes[0].legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(
        "every client of every seed; whiskers reach the best and the worst client", fontsize=9
    )
    save(fig, path)
