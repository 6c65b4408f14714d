"""The study's plots: test metric against MB, alpha or data size, and convergence curves.

Every axis names its figure; every panel has its legend; coinciding lines stay visible
(each series its own marker, and a slight offset along x); an axis over few values is
ticked at those values; round axes are ticked at integers. Where they apply, a dotted line
marks the majority-class accuracy and dashed lines the centralized references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from fedpet.files import atomic_write

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
COLORS = tuple(f"C{i}" for i in range(10))


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))


def tick_at(ax: Axes, values: list[float], axis: str = "x") -> None:
    """Tick an axis at its few data values, labelled plainly.

    A log axis over less than a decade would otherwise show no labels at all.
    """
    shown = sorted(set(float(v) for v in values if np.isfinite(v)))
    if not shown or len(shown) > 8:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(shown))
    # 3 significant digits, but whole numbers in full (2000, not 2e+03)
    target.set_major_formatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:.3g}")
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def integer_rounds(ax: Axes, rounds: list[float]) -> None:
    """Ticks at whole rounds only: at each round when there are few."""
    shown = sorted(set(rounds))
    if 0 < len(shown) <= 8:
        ax.set_xticks(shown, [f"{r:g}" for r in shown])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def offsets(n: int, log: bool, span: float) -> list[float]:
    """Per series, a small shift along x so that coinciding lines are all visible.

    Multiplicative on a log axis (about 2% of a decade apart), additive on a linear one
    (1% of the x range apart).
    """
    steps = [i - (n - 1) / 2 for i in range(n)]
    return [10 ** (0.02 * s) if log else 0.01 * span * s for s in steps]


def style(i: int) -> dict[str, Any]:
    """The ``i``-th series' colour and marker."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)]}


def reference_lines(ax: Axes, refs: pd.DataFrame, colors: dict[str, str]) -> None:
    """Dashed lines at the centralized test metric of each method (its series' colour)."""
    for i, (_, ref) in enumerate(refs.iterrows()):
        color = colors.get(str(ref["method"]), "gray")
        dashes = (0, (5, 2 + 2 * i))  # lines at the same height stay told apart
        label = f"{ref['method']} centralized"
        ax.axhline(ref["mean"], ls=dashes, lw=1.2, color=color, label=label)


def by_task(
    path: Path,
    tasks: list[str],
    cells: pd.DataFrame,
    xlabel: str,
    log: bool,
    refs: pd.DataFrame | None = None,
    majority: dict[str, float] | None = None,
    at_values: bool = True,
    named: bool = False,
) -> None:
    """One panel per task: a line per series of :func:`~fedpet.study.report.plot_cells`.

    ``named``: write each point's method above the panel at its x (when the lines are
    settings and each method has an x of its own, as its bytes).
    """
    fig = Figure(figsize=(8 * len(tasks), 4.2))  # room for the legend beside each panel
    axes = fig.subplots(1, len(tasks), squeeze=False)
    cells = cells[cells["x"].notna()]  # (a run the x does not apply to: iid on alpha)
    seeds = sorted(set(cells["n"]))
    metric = str(cells["metric_name"].iloc[0])
    for ax, task in zip(axes[0], tasks, strict=True):
        part = cells[cells["task"] == task]
        names = list(dict.fromkeys(part["series"]))
        xs = part["x"].astype(float)
        span = float(xs.max() - xs.min()) or 1.0
        shift = offsets(len(names), log, span)
        colors: dict[str, str] = {}
        for i, name in enumerate(names):
            line = part[part["series"] == name].sort_values("x")
            x = line["x"].astype(float) * shift[i] if log else line["x"].astype(float) + shift[i]
            look = style(i)
            colors.setdefault(str(line["method"].iloc[0]), look["color"])
            ax.errorbar(x, line["mean"], yerr=line["std"], capsize=3, label=name, **look)
        if named:
            at = blended_transform_factory(ax.transData, ax.transAxes)
            for x, method in part.groupby("x")["method"].first().items():
                ax.text(float(x), 1.01, str(method), transform=at, ha="center", fontsize=7)
        if refs is not None:
            reference_lines(ax, refs[refs["task"] == task], colors)
        if majority and task in majority:
            ax.axhline(majority[task], ls=":", color="gray", label="majority class")
        ax.set_xscale("log" if log else "linear")
        if not log or xs.max() < 10 * xs.min() or (xs.nunique() <= 4 and at_values):
            tick_at(ax, list(xs))  # few values, or a log axis within a decade
        ax.set_title(task, pad=14 if named else 6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    spread = (
        f"error bars: sample std over the {'/'.join(map(str, seeds))} seeds of each setting"
        if max(seeds) > 1
        else "one seed per setting: no error bars"
    )
    fig.suptitle(spread, fontsize=9)
    save(fig, path)


def convergence(path: Path, curves: dict[tuple[str, str], dict[str, Any]], metric: str) -> None:
    """Per (task, setting): validation metric by round and by cumulative MB; training loss."""
    fig = Figure(figsize=(15, 3.6 * len(curves)))
    axes = fig.subplots(len(curves), 3, squeeze=False)
    for (ax_round, ax_mb, ax_loss), ((task, setting), series) in zip(
        axes, curves.items(), strict=True
    ):
        rounds: list[float] = []
        central = setting == "centralized"
        for i, (label, curve) in enumerate(series.items()):
            look = style(i)
            frame = curve.dropna(subset=["val"])  # the rounds evaluated (federation.eval_every)
            ax_round.plot(frame.index, frame["val"], label=label, **look)
            if not central:
                ax_mb.plot(frame["mb"], frame["val"], label=label, **look)
            loss = curve.dropna(subset=["loss"])
            ax_loss.plot(loss.index, loss["loss"], label=label, **look)
            rounds.extend(float(r) for r in curve.index)
        title = f"{task}, {setting}"
        unit = "epoch" if central else "round"
        for ax, what in ((ax_round, "validation"), (ax_mb, "validation"), (ax_loss, "loss")):
            ax.set_title(f"{title}: {what}", fontsize=9)
            ax.grid(alpha=0.3)
        for ax in (ax_round, ax_loss):
            ax.legend(fontsize=7)
            ax.set_xlabel(unit)
            integer_rounds(ax, rounds)
        ax_round.set_ylabel(f"validation {metric}")
        ax_loss.set_ylabel("training loss (mean over the examples trained)")
        if central:  # nothing travels: no communication axis
            ax_mb.text(0.5, 0.5, "centralized: no communication", ha="center", va="center")
            ax_mb.set_xticks([])
            ax_mb.set_yticks([])
        else:
            ax_mb.legend(fontsize=7)
            ax_mb.set_xlabel("cumulative MB, up + down (log)")
            ax_mb.set_ylabel(f"validation {metric}")
            ax_mb.set_xscale("log")
    save(fig, path)


ERRORS = {
    "lora_error": "relative error of averaged B A (log)",
    "aggregation_error": "global miss / clients' mean step (log)",
}
"""The aggregation errors a study plots by round: each curves column, its axis label."""


def lora_error(
    path: Path, curves: dict[tuple[str, str], dict[str, Any]], column: str = "lora_error"
) -> None:
    """Per (task, setting): a LoRA aggregation error by round (log), ``column`` of ERRORS."""
    fig = Figure(figsize=(5.5, 3.6 * len(curves)))
    axes = fig.subplots(len(curves), 1, squeeze=False)
    for (ax,), ((task, setting), series) in zip(axes, curves.items(), strict=True):
        values = []
        for i, (label, frame) in enumerate(series.items()):
            # an exact aggregation (FFA-LoRA) is 0 up to rounding: floored for the log axis
            error = frame[column].clip(lower=1e-12)
            values.extend(error.dropna().tolist())
            ax.plot(frame.index, error, label=label, **style(i))
        ax.set_title(f"{task}, {setting}")
        ax.set_xlabel("round")
        ax.set_ylabel(ERRORS[column])
        ax.set_yscale("log")
        if values and max(values) / min(values) < 10:
            ax.yaxis.set_minor_formatter(lambda v, _: f"{v:.2g}")  # label within the decade
        integer_rounds(ax, [float(r) for f in series.values() for r in f.index])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path)
