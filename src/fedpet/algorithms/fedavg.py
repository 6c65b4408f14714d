"""FedAvg (McMahan et al., 2017): the example-weighted mean of client updates."""

from __future__ import annotations

from fedpet.algorithms.base import Aggregate, PlainAlgorithm
from fedpet.state import TrainableState


class FedAvg(PlainAlgorithm):
    """Plain local training; the server adds ``server_lr`` times the weighted mean update."""

    name = "fedavg"

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """Theta + server_lr * sum_k n_k delta_k / sum_k n_k.

        Tensors the round's updates leave out (those the algorithm did not train) stay.
        """
        mean, lr = aggregate.mean(), self.server_lr
        return {n: t + lr * mean[n] if n in mean else t for n, t in global_state.items()}, (
            server_state
        )
