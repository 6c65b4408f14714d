"""What crosses the wire in a round: a client's download and its reply.

Both halves of the round use these; neither knows the other's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpet.stages import Report
from fedpet.state import Schema, TrainableState


@dataclass(frozen=True)
class Download:
    """What the server sends a client: its encoded view of the download, with its layout.

    ``committed`` is the round of the client's last aggregated update whose state it kept
    (0: none): the version of its state the client continues from
    (:mod:`fedpet.runtime.client_store`).
    """

    payload: bytes
    layout: Schema
    committed: int = 0


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back: its encoded update, its report and two flags.

    ``report`` holds what it tells of its training (all None where a stage withholds it,
    DP). ``kept`` says it saved a new state that the server commits if it aggregates the
    update; ``fresh`` that the state the server named was gone, so it started afresh. In a
    secure round ``payload`` is empty and ``masked`` is the update the secure sum masks.
    """

    payload: bytes
    report: Report = field(default_factory=Report)
    kept: bool = False
    fresh: bool = False
    masked: TrainableState | None = None
