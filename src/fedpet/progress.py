"""What a person sees while a run goes: a banner, a line per round, a bar within a round.

The runtimes report to a :class:`Watcher` through the recorder: the run's start, progress
within a round (clients heard from, or a centralized epoch's steps), the end of each round
and the summary. :class:`RunDisplay` shows them; the trackers (:mod:`fedpet.tracking`) log
them. Round lines are plain text, so they appear in a log file (``nohup``, SLURM, CI) as
each round ends; the bar is drawn only on a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True)
class RunStart:
    """What a run is, as it starts (or resumes after ``done`` rounds)."""

    task: str
    model: str
    method: str
    trainable_params: int
    total_params: int
    clients: int
    clients_per_round: int
    rounds: int
    unit: str  # "round", or "epoch" for centralized training
    algorithm: str | None  # None when centralized
    device: str
    precision: str
    out: str
    done: int
    config: dict[str, Any]


@dataclass(frozen=True)
class RoundEnd:
    """A finished round: its ``metrics.jsonl`` line and the best validated round so far."""

    round: int
    total: int
    unit: str
    metric: str
    row: dict[str, Any]
    best_round: int
    best_val: float


class Watcher:
    """Receives a run's events; each does nothing unless a subclass says otherwise."""

    def start(self, run: RunStart) -> None:
        """The run starts (or resumes)."""

    def progress(self, done: int, total: int) -> None:
        """Within a round: ``done`` of ``total`` clients replied (or steps of an epoch)."""

    def round_end(self, end: RoundEnd) -> None:
        """A round was evaluated (or not), logged and checkpointed."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run finished; ``summary`` is its ``summary.json``."""

    def close(self) -> None:
        """The run ended, finished or not (called once, last)."""


class Watchers(Watcher):
    """Several watchers, each told every event in turn."""

    def __init__(self, watchers: Sequence[Watcher] = ()) -> None:
        self.watchers = list(watchers)

    def start(self, run: RunStart) -> None:
        """Tell each."""
        for w in self.watchers:
            w.start(run)

    def progress(self, done: int, total: int) -> None:
        """Tell each."""
        for w in self.watchers:
            w.progress(done, total)

    def round_end(self, end: RoundEnd) -> None:
        """Tell each."""
        for w in self.watchers:
            w.round_end(end)

    def finish(self, summary: dict[str, Any]) -> None:
        """Tell each."""
        for w in self.watchers:
            w.finish(summary)

    def close(self) -> None:
        """Close each, even if one fails; then raise the first failure."""
        failures = []
        for w in self.watchers:
            try:
                w.close()
            except Exception as exc:  # the others must still close
                failures.append(exc)
        if failures:
            raise failures[0]


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def banner(run: RunStart) -> str:
    """One line: task, model, method, trainable share, federation, device."""
    share = 100 * run.trainable_params / max(1, run.total_params)
    if run.algorithm is None:
        how = f"centralized, {run.rounds} epochs"
    else:
        how = (
            f"{run.clients} clients, {run.clients_per_round} per round, {run.rounds} rounds, "
            f"{run.algorithm}"
        )
    again = f", resuming after {run.unit} {run.done}" if run.done else ""
    return (
        f"fedpet: {run.task} · {run.method} on {run.model} · {run.trainable_params:,} of "
        f"{run.total_params:,} params train ({share:.2f}%) · {how} · {run.device} "
        f"{run.precision}{again} → {run.out}"
    )


def round_line(end: RoundEnd, eta: float | None) -> str:
    """One line per round: validation, loss, bytes, seconds and the time left."""
    row = end.row
    val = row.get(f"val_{end.metric}")
    parts = [f"{end.unit} {end.round}/{end.total}"]
    if val is None:
        parts.append("not validated")
    else:
        best = f"best {end.best_val:.4f} @ {end.best_round}"
        parts.append(f"val {end.metric} {val:.4f} ({best})")
    if row.get("train_loss") is not None:
        parts.append(f"loss {row['train_loss']:.4f}")
    if "bytes_up" in row:
        parts.append(f"{row['bytes_up'] / 1e6:.2f} MB up, {row['bytes_down'] / 1e6:.2f} MB down")
    for model, key in (("global", "client_test"), ("personal", "personal_test")):
        if f"{key}_mean" in row:  # every client's local test split
            figures = (f"{k} {row[f'{key}_{k}']:.4f}" for k in ("mean", "p10", "worst"))
            parts.append(f"clients' {model} {', '.join(figures)}")
    if "epsilon" in row:
        parts.append(f"epsilon {row['epsilon']:.2f}")
    parts.append(f"{row.get('train_seconds', 0) + row.get('eval_seconds', 0):.1f} s")
    if eta is not None and end.round < end.total:
        parts.append(f"ETA {duration(eta)}")
    return " · ".join(parts)


class RunDisplay(Watcher):
    """The banner and round lines on stdout; on a terminal, a bar within each round.

    ``quiet`` shows nothing (the caller still prints the summary).
    """

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console()
        self.bar: Progress | None = None
        self.started = time.perf_counter()
        self.first = 0
        self.label = ""

    def start(self, run: RunStart) -> None:
        """Print the banner; start the bar on a terminal."""
        self.started, self.first = time.perf_counter(), run.done
        self.unit, self.total = run.unit, run.rounds
        self.what = "steps" if run.algorithm is None else "clients"
        if self.quiet:
            return
        self._print(banner(run))
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.what),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self._label(run.done + 1), total=None)

    def _label(self, round_: int) -> str:
        return f"{self.unit} {round_}/{self.total}"

    def _print(self, line: str) -> None:
        if self.console.is_terminal:
            self.console.print(line, highlight=False, soft_wrap=True)
        else:  # plain and unwrapped; the command's stdout is line-buffered (fedpet.cli.main)
            print(line)

    def progress(self, done: int, total: int) -> None:
        """Advance the bar."""
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)

    def round_end(self, end: RoundEnd) -> None:
        """Print the round's line; reset the bar for the next round."""
        if self.quiet:
            return
        done = end.round - self.first
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (end.total - end.round) if done > 0 else None
        self._print(round_line(end, eta))
        if self.bar is not None:
            self.bar.reset(self.task, description=self._label(end.round + 1), total=None)

    def close(self) -> None:
        """Stop the bar."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.3f} MB"


FAULTS = {
    "clients_failed": "clients failed",
    "clients_late": "clients past the deadline",
    "updates_rejected": "updates rejected",
    "rounds_retried": "round retries",
    "rounds_skipped": "rounds skipped",
}


def _fault_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the faults that happened (none when the run went cleanly)."""
    return [(label, f"{s[key]:,}") for key, label in FAULTS.items() if s.get(key)]


TIMES = {"train_seconds": "train time", "wall_seconds": "wall time"}
"""The run's times, which a DP run withholds (they add up what its cohorts held)."""


def _bytes_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The bytes sent in all; under DP (totals withheld), one client's payload instead."""
    if "bytes_up_total" in s:
        return [
            ("bytes up (total)", _mb(s["bytes_up_total"])),
            ("bytes down (total)", _mb(s["bytes_down_total"])),
        ]
    return [
        ("bytes up (per client)", _mb(s["bytes_per_client_up"])),
        ("bytes down (per client)", _mb(s["bytes_per_client_down"])),
        ("epsilon", f"{s['epsilon']:.2f} ({s['dp_randomness']})"),
    ]


GENERATIVE = ("perplexity", "token_accuracy", "exact_match")
"""The test figures of a generative run the summary table shows."""


def print_summary(s: dict[str, Any]) -> None:
    """The end-of-run table: metric, bytes, time, memory."""
    table = Table(
        title=f"{s['task']} · {s['method']}" + (" · centralized" if s["centralized"] else "")
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (f"best val {s['metric_name']}", f"{s['best_val_metric']:.4f} (round {s['best_round']})"),
        (f"test {s['metric_name']}", f"{s['test_metric']:.4f}"),
        *([("test macro-F1", f"{s['test_macro_f1']:.4f}")] if s.get("test_macro_f1") else []),
        *[(f"test {k}", f"{s[f'test_{k}']:.4f}") for k in GENERATIVE if f"test_{k}" in s],
        ("trainable / total params", f"{s['trainable_params']:,} / {s['total_params']:,}"),
        *_bytes_rows(s),
        *(
            [("train examples seen", f"{s['train_examples_seen']:,}")]
            if "train_examples_seen" in s
            else []
        ),
        *_fault_rows(s),
        *[(label, f"{s[key]:.1f} s") for key, label in TIMES.items() if key in s],
        ("peak RSS", f"{s['peak_rss_mb']:.0f} MB"),
        *([("peak GPU memory", f"{s['peak_gpu_mb']:.0f} MB")] if "peak_gpu_mb" in s else []),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
