"""Update validation as a stage: the server refuses an update that is not one it can use."""

from __future__ import annotations

from typing import ClassVar

from fedpet.stages.base import Arrival, Rejected, Stage
from fedpet.state import TrainableState
from fedpet.validation import update_problem


class UpdateChecks(Stage):
    """Server half: the agreed names and shapes, finite values, a norm within ``max_norm``.

    See :func:`~fedpet.validation.update_problem`; a failing update is rejected with why.
    The norm bound is a single update's: a secure sum is checked without it.
    """

    name: ClassVar[str] = "validation"

    def __init__(self, max_norm: float | None) -> None:
        self.max_norm = max_norm

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """The update unchanged, or :class:`Rejected` with why it must not be aggregated."""
        bound = self.max_norm if arrival.clients == 1 else None
        problem = update_problem(update, arrival.layout, bound)
        if problem is not None:
            raise Rejected(problem)
        return update, weight
