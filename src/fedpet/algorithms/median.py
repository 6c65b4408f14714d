"""Coordinate-wise median (Yin et al., 2018): robust to a minority of arbitrary updates.

Unweighted, since a client could inflate its example count to pull a weighted statistic,
and it needs every update of the round in memory (one trainable state per client).
"""

from __future__ import annotations

from fedpet.algorithms.base import Aggregate, PlainAlgorithm
from fedpet.state import TrainableState, add


def coordinate_median(aggregate: Aggregate) -> TrainableState:
    """Per coordinate, the median of the clients' values.

    With an even number of clients, the mean of the two middle values.
    """
    median: TrainableState = {}
    for name, values in aggregate.stacked().items():
        ordered = values.sort(dim=0).values
        k = ordered.shape[0]
        median[name] = (ordered[(k - 1) // 2] + ordered[k // 2]) / 2
    return median


class Median(PlainAlgorithm):
    """Plain local training; the server adds ``server_lr`` times the coordinate-wise median."""

    name = "median"
    keeps_updates = True
    allows_dp = False  # it reads single updates
    allows_secure_aggregation = False

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """Theta + server_lr * median_k delta_k, per coordinate."""
        update = coordinate_median(aggregate)
        return add(global_state, update, self.server_lr), server_state
