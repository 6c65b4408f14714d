"""A round's counters, declared once: the intake counts them, the recorder logs and totals them.

Each counter is a field of :class:`RoundCounts` whose metadata says how the recorder shows
it: under which name in ``metrics.jsonl`` (none: not logged), under which name its running
total goes into ``summary.json`` (none: not totalled), and whether a DP run withholds it: a
statistic of the clients' data, or a count that grows with the cohort or names its clients
(see :mod:`fedpet.privacy.release`). A list counter (clients whose update was lost) is
logged as the list and totalled as its length. Adding a counter is adding one field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def shown(metric: str | None, total: str | None, private: bool = False) -> dict[str, Any]:
    """A counter's metadata: its metrics-line name, its summary name, whether DP withholds it."""
    return {"metric": metric, "total": total, "private": private}


def counter(metric: str | None, total: str | None, private: bool = False) -> Any:
    """A number counter starting at 0 (see :func:`shown`)."""
    return field(default=0, metadata=shown(metric, total, private))


@dataclass
class RoundCounts:
    """What a round (all its attempts) moved, trained and lost.

    ``examples`` counts the examples local training saw, every epoch's (the weights of the
    mean ``loss_sum / examples``); ``failed``, ``late`` and
    ``rejected`` list the clients whose update was lost, each with its attempt and reason.
    """

    bytes_up: int = counter("bytes_up", "bytes_up_total", private=True)
    bytes_down: int = counter("bytes_down", "bytes_down_total", private=True)
    examples: int = counter("examples", "train_examples_seen", private=True)
    loss_sum: float = counter(None, None)
    failed: list[dict[str, object]] = field(
        default_factory=list, metadata=shown("failed", "clients_failed", private=True)
    )
    late: list[dict[str, object]] = field(
        default_factory=list, metadata=shown("late", "clients_late", private=True)
    )
    rejected: list[dict[str, object]] = field(
        default_factory=list, metadata=shown("rejected", "updates_rejected", private=True)
    )

    def __add__(self, other: RoundCounts) -> RoundCounts:
        """Both rounds' (or attempts') counts together: numbers add, lists concatenate."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        return RoundCounts(**summed)

    @property
    def train_loss(self) -> float | None:
        """The clients' mean training loss, weighted by their examples; None if none trained."""
        return self.loss_sum / self.examples if self.examples else None

    def metrics(self, private: bool) -> dict[str, Any]:
        """The counters as ``metrics.jsonl`` logs them, with the mean training loss.

        With ``private`` (DP), without the statistics of the clients' data: the loss and
        the counters marked private.
        """
        logged = {
            f.metadata["metric"]: getattr(self, f.name)
            for f in fields(self)
            if f.metadata["metric"] is not None and not (private and f.metadata["private"])
        }
        return logged if private else {"train_loss": self.train_loss, **logged}


def totalled(counts: RoundCounts) -> dict[str, float]:
    """A round's contribution to the running totals, by counter name (lists by length)."""
    return {
        f.name: len(v) if isinstance(v := getattr(counts, f.name), list) else v
        for f in fields(counts)
        if f.metadata["total"] is not None
    }


def summary_totals(totals: dict[str, float], private: bool) -> dict[str, float]:
    """The running totals under their ``summary.json`` names (without DP-withheld ones)."""
    return {
        f.metadata["total"]: totals.get(f.name, 0)
        for f in fields(RoundCounts)
        if f.metadata["total"] is not None and not (private and f.metadata["private"])
    }
