"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum on the mean update."""

from __future__ import annotations

from dataclasses import dataclass

from fedpet.algorithms.base import Aggregate, PlainAlgorithm
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import within
from fedpet.state import TrainableState, add, zeros_like


@dataclass(frozen=True)
class FedAvgMOptions(AlgorithmOptions):
    """FedAvgM's server momentum."""

    momentum: float = option(
        0.9, "FedAvgM: server momentum", within(0, 1, "a number in [0, 1)", high_open=True)
    )


class FedAvgM(PlainAlgorithm):
    """``v = momentum * v + mean update``; ``theta += server_lr * v``."""

    name = "fedavgm"
    options = FedAvgMOptions
    config: FedAvgMOptions

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """The momentum buffer, zero."""
        return zeros_like(global_state)

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """One momentum step on the weighted mean update."""
        velocity = add(aggregate.mean(), server_state, self.config.momentum)
        return add(global_state, velocity, self.server_lr), velocity
