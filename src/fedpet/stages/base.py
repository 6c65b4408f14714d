"""The stage protocol: a step with a client half and a server half on an update's way.

A round sends each update through the run's stages in order. On the client,
:meth:`Stage.client` transforms the update before it is encoded, and the client's
:class:`Report` (its example count, loss and examples trained on) with it: a stage may
withhold them. On the server, :meth:`Stage.server` checks or transforms every decoded
update and its weight before aggregation, and :meth:`Stage.release` acts on the round's
aggregate before the algorithm's server update (or learns that the round was skipped)
and returns the stage's metrics for the round. What a stage keeps across rounds goes
through :meth:`Stage.state_dict` and :meth:`Stage.load_state_dict`, checkpointed with the
server. Update validation and
differential privacy are stages; the round protocol (:mod:`fedpet.runtime.server_half`,
:mod:`fedpet.runtime.client_half`) knows none of them by name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedpet.algorithms.base import Aggregate
from fedpet.state import Schema, TrainableState


class Rejected(Exception):
    """Raised by a stage's server half: the update must not be aggregated (the reason)."""


@dataclass(frozen=True)
class Report:
    """What a client tells the server besides its update; None where it withholds it.

    ``num_examples`` is its partition size (the FedAvg weight), ``seen`` the examples its
    local steps trained on, and ``loss`` their mean.
    """

    num_examples: int | None = None
    loss: float | None = None
    seen: int | None = None

    @property
    def weight(self) -> float:
        """The client's weight in a sum it cannot be told apart in: its count, or 1."""
        return 1.0 if self.num_examples is None else float(self.num_examples)


@dataclass(frozen=True)
class Side:
    """What a stage's client half knows: the round and the client."""

    round: int
    client: int


@dataclass(frozen=True)
class Arrival:
    """What a stage's server half knows of an update.

    Its client, the agreed layout, how many clients' updates it sums (more than one for a
    secure sum) and ``tally``, the round attempt's counts that stages keep for their
    release (DP's count of the updates within the clip).
    """

    client: int
    layout: Schema
    clients: int = 1
    tally: Counter[str] = field(default_factory=Counter)


class Stage:
    """A round stage; every half here is the identity (subclasses override what they do)."""

    name: ClassVar[str] = "stage"

    def client(
        self, update: TrainableState, report: Report, side: Side
    ) -> tuple[TrainableState, Report]:
        """Client half: the update to encode and the report to send with it."""
        return update, report

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """Server half: the update and weight to aggregate; raise :class:`Rejected` to refuse.

        ``weight`` is the client's example count, or None when it withheld it.
        """
        return update, weight

    def release(
        self, aggregate: Aggregate | None, tally: Counter[str], round_: int
    ) -> dict[str, float]:
        """Server half: act on the round's aggregate (in place); the round's metrics.

        ``aggregate`` is None in a skipped round (nothing is released); ``tally`` holds what
        :meth:`server` counted in the attempt aggregated.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the server keeps of the stage across rounds (JSON), checkpointed."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned (empty: from the start)."""
