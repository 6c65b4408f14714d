"""FedSVD (Lee et al., NeurIPS 2025): B trained on a fixed A, A re-set by the server's SVD.

Clients train B and the head with every A held fixed at what they received, so averaging B
averages the products exactly, as in FFA-LoRA. The server then factors each module's new
product ``mean(B) A`` by its SVD ``U S V^T``: A becomes the orthonormal rows ``V_r^T`` and B
takes the rest, ``U_r S_r``. The product is unchanged (its rank is at most ``r``), but A
follows the directions the clients moved in instead of staying at its random start. The
new A goes down with the next download; only B and the head go up.
"""

from __future__ import annotations

from fedpet.algorithms.base import Aggregate, Needs
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.flexlora import best_rank
from fedpet.methods.lora import factor_pairs, lora_factor
from fedpet.state import TrainableState


class FedSvd(FedAvg):
    """FedAvg over B and the head, then each module's product re-factored by its SVD."""

    name = "fedsvd"
    needs = Needs(method="lora")

    def trains(self, name: str, round_: int) -> bool:
        """Everything but LoRA's A factors, which clients hold fixed."""
        return lora_factor(name) != "A"

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """FedAvg's update, then ``B, A = U_r S_r, V_r^T`` of each ``B A``."""
        new, server_state = super().server_update(global_state, server_state, aggregate)
        for a, b in factor_pairs(new):
            new[b], new[a] = best_rank(new[b] @ new[a], new[b].shape[1])
        return new, server_state
