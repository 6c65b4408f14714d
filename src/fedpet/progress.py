"""What a person sees while a run goes: a bar over rounds, then a short table."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


class RoundProgress:
    """A progress bar over rounds showing the latest validation metric."""

    def __init__(self, total: int, metric: str, unit: str) -> None:
        self.metric = metric
        self.progress = Progress(
            TextColumn(f"{unit}s"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("run", total=total, status="")

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def update(self, round_: int, val: float | None, best_round: int, best_val: float) -> None:
        """Advance to ``round_`` and show its validation metric (if evaluated) and the best."""
        shown = "not evaluated" if val is None else f"{val:.4f}"
        status = f"val {self.metric} {shown} (best {best_val:.4f} @ {best_round})"
        self.progress.update(self.task, completed=round_, status=status)


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
        ("test macro-F1", f"{s['test_macro_f1']:.4f}"),
        ("trainable / total params", f"{s['trainable_params']:,} / {s['total_params']:,}"),
        ("bytes up (total)", _mb(s["bytes_up_total"])),
        ("bytes down (total)", _mb(s["bytes_down_total"])),
        *(
            [("train examples seen", f"{s['train_examples_seen']:,}")]
            if "train_examples_seen" in s
            else []
        ),
        *_fault_rows(s),
        ("train time", f"{s['train_seconds']:.1f} s"),
        ("wall time", f"{s['wall_seconds']:.1f} s"),
        ("peak RSS", f"{s['peak_rss_mb']:.0f} MB"),
        *([("peak GPU memory", f"{s['peak_gpu_mb']:.0f} MB")] if "peak_gpu_mb" in s else []),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
