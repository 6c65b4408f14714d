"""Error feedback as a stage: what a lossy upload codec drops is sent in later rounds."""

from __future__ import annotations

from typing import ClassVar

from fedpet.stages.base import ClientSide, Stage
from fedpet.state import TrainableState, add, subtract


class ErrorFeedback(Stage):
    """Client half: encode ``update + residual``; the new residual is what the encoding lost.

    Over the rounds, what was sent plus the last residual is exactly the sum of the updates.
    The residual is the client's memory; the server half is the identity.
    """

    name: ClassVar[str] = "residual"
    wants_sent: ClassVar[bool] = True
    keeps_client_memory: ClassVar[bool] = True

    def client(self, update: TrainableState, side: ClientSide) -> TrainableState:
        """The update plus the residual the client kept (none before its first round)."""
        return add(update, side.memory) if side.memory else update

    def sent(self, update: TrainableState, decoded: TrainableState, side: ClientSide) -> None:
        """Keep what the encoding of ``update`` lost as the new residual."""
        side.memory = subtract(update, decoded)
