"""The stage protocol: a step with a client half and a server half on an update's way.

A round sends each update through the run's stages in order: on the client, each stage's
:meth:`Stage.client` transforms it before it is encoded and :meth:`Stage.sent` sees what the
server will decode of it; on the server, each stage's :meth:`Stage.server` checks or
transforms every decoded update and its weight before aggregation, and
:meth:`Stage.release` acts on the round's aggregate before the algorithm's server update.
Update validation, differential privacy and error feedback are stages; the round
protocol (:mod:`fedpet.runtime.server_half`, :mod:`fedpet.runtime.client_half`) knows none
of them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedpet.algorithms.base import Aggregate
from fedpet.state import Schema, TrainableState


class Rejected(Exception):
    """Raised by a stage's server half: the update must not be aggregated (the reason)."""


@dataclass
class ClientSide:
    """What a stage's client half knows: the round, the client and the stage's own memory.

    ``memory`` is the stage's state for this client, kept between the rounds the client is
    sampled in (and only when its update was aggregated); a stage replaces it.
    """

    round: int
    client: int
    memory: TrainableState = field(default_factory=dict)


@dataclass(frozen=True)
class Arrival:
    """What a stage's server half knows of an update: its client and the agreed layout."""

    client: int
    layout: Schema


class Stage:
    """A round stage; every half here is the identity (subclasses override what they do).

    Attributes
    ----------
    name
        The stage's name: the prefix of its client memory in the client-state files.
    withholds_stats
        Whether clients report nothing but their update (no example count, no loss), so
        that updates are weighted alike: DP's statistics of the clients' data.
    wants_sent
        Whether :meth:`sent` must be called (it costs a decode of each upload).
    keeps_client_memory
        Whether the stage keeps a memory per client (needs a runtime that stores it).
    """

    name: ClassVar[str] = "stage"
    withholds_stats: ClassVar[bool] = False
    wants_sent: ClassVar[bool] = False
    keeps_client_memory: ClassVar[bool] = False

    def client(self, update: TrainableState, side: ClientSide) -> TrainableState:
        """Client half: the update to encode, from the update so far."""
        return update

    def sent(self, update: TrainableState, decoded: TrainableState, side: ClientSide) -> None:
        """Client half, after encoding: ``update`` was encoded, the server decodes ``decoded``."""

    def open(self) -> None:
        """Server half: a round attempt opens (reset what an attempt counts)."""

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """Server half: the update and weight to aggregate; raise :class:`Rejected` to refuse.

        ``weight`` is the client's example count, or None when clients withhold it.
        """
        return update, weight

    def release(self, aggregate: Aggregate, round_: int) -> None:
        """Server half: act on the round's aggregate (in place) before the server update."""

    def end_round(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Server half, as the round is recorded: metrics-line figures, checkpoint meta."""
        return {}, {}

    def restore(self, meta: dict[str, Any]) -> None:
        """Server half: continue from a checkpoint's meta (what :meth:`end_round` saved)."""
