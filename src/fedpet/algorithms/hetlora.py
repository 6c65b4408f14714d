"""HetLoRA (Cho et al., 2024): clients train LoRA at their own ranks, zero-padded to aggregate.

Client ``k`` of rank ``r_k`` receives the first ``r_k`` rows of each A and columns of each B,
and sends its update at that size (its bytes follow its rank). The server pads every update
with zeros to the full rank and takes the example-weighted mean, as FedAvg does.
"""

from __future__ import annotations

from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.ranks import RankedClients
from fedpet.state import TrainableState, pad


class HetLora(RankedClients, FedAvg):
    """FedAvg over zero-padded updates of clients with heterogeneous LoRA ranks."""

    name = "hetlora"

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """The update zero-padded to the full rank."""
        return pad(update, download)
