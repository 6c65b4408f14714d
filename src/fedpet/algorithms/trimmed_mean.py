"""Coordinate-wise trimmed mean (Yin et al., 2018): drop the extremes, average the rest.

Unweighted, like the median, and it needs every update of the round in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpet.algorithms.base import Aggregate, PlainAlgorithm
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import within
from fedpet.state import TrainableState, add


@dataclass(frozen=True)
class TrimmedMeanOptions(AlgorithmOptions):
    """How much the trimmed mean drops at each end."""

    trim_fraction: float = option(
        0.2,
        "fraction of the clients dropped at each end, per coordinate",
        within(0, 0.5, "a number in [0, 0.5)", high_open=True),
    )


def trimmed_mean(aggregate: Aggregate, fraction: float) -> TrainableState:
    """Per coordinate, the mean of the K clients' values without the extremes.

    The ``floor(fraction * K)`` largest and as many smallest values are dropped.
    """
    result: TrainableState = {}
    for name, values in aggregate.stacked().items():
        k = values.shape[0]
        cut = math.floor(fraction * k)
        result[name] = values.sort(dim=0).values[cut : k - cut].mean(dim=0)
    return result


class TrimmedMean(PlainAlgorithm):
    """Plain local training; the server adds ``server_lr`` times the trimmed mean update.

    ``algorithm.trim_fraction`` (0.2) of the clients is dropped at each end, per coordinate:
    of 5 clients, the largest and the smallest value.
    """

    name = "trimmed-mean"
    options = TrimmedMeanOptions
    config: TrimmedMeanOptions
    keeps_updates = True
    allows_dp = False  # it reads single updates
    allows_secure_aggregation = False

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """Theta + server_lr * trimmed_mean_k delta_k, per coordinate."""
        update = trimmed_mean(aggregate, self.config.trim_fraction)
        return add(global_state, update, self.server_lr), server_state
