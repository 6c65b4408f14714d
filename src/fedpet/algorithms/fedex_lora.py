"""FedEx-LoRA (Singhal et al., ACL 2025): FedAvg on LoRA, its error merged into the base.

Averaging B and A separately misses ``mean_k(B_k A_k) - mean(B) mean(A)``. The server
computes that residual per adapted module from each client's factors and adds it to a
dense correction ``C`` that the global model merges into the module's frozen base weight:
the effective update ``s (C + B A)`` is then exactly the clients' mean. ``C`` is part of the
global state (``<B>@merged``, in the product's units), so checkpoints, the best state and
exports hold it, and it goes down with every download once it exists: a dense matrix per
module, in round 2 and after. Every client gets the whole accumulated correction, not the
last residual: the same bytes, and a client that missed rounds, or is sampled for the first
time, needs nothing else. The server needs each client's own factors (their product), so
neither DP nor secure aggregation allows it.
"""

from __future__ import annotations

from typing import ClassVar

from fedpet.algorithms.base import Aggregate, Needs
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.flexlora import product_changes, product_name
from fedpet.methods.lora import factor_pairs, is_merged, merged_name, merged_plus
from fedpet.state import TrainableState


class FedExLora(FedAvg):
    """FedAvg over LoRA's factors and the head; each module's residual merged into its base."""

    name = "fedex-lora"
    needs = Needs(method="lora")
    allows_dp: ClassVar[bool] = False
    allows_secure_aggregation: ClassVar[bool] = False

    def trains(self, name: str, round_: int) -> bool:
        """Everything but the base corrections, which clients merge and never send."""
        return not is_merged(name)

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """The update, and per LoRA module the change ``B_k A_k - B A`` of its product."""
        return {**update, **product_changes(download, download, update)}

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """FedAvg's factors; ``C += (B A + server_lr * mean change) - B' A'`` per module."""
        new, server_state = super().server_update(global_state, server_state, aggregate)
        mean = aggregate.mean()
        for a, b in factor_pairs(global_state):
            exact = global_state[b] @ global_state[a] + self.server_lr * mean[product_name(b)]
            new[merged_name(b)] = merged_plus(global_state, b, exact - new[b] @ new[a])
        return new, server_state
