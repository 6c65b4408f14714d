"""RoLoRA (Chen et al., NeurIPS 2025): the clients train LoRA's factors in alternate rounds.

Odd rounds train every B with the A factors held fixed, even rounds every A with the B
factors fixed (B first: with LoRA's zero B, A gets no gradient); the head trains every
round. The fixed factor is the same for every client, so averaging the trained one averages
the products exactly: ``sum_k p_k B_k A = (sum_k p_k B_k) A``. A round sends up only the
factor it trains and the head; the download is the whole state, since the factor a client
holds fixed is the one the server aggregated the round before.
"""

from __future__ import annotations

from fedpet.algorithms.base import Needs
from fedpet.algorithms.fedavg import FedAvg
from fedpet.methods.lora import lora_factor


def trained_factor(round_: int) -> str:
    """The LoRA factor the clients train in ``round_``: B in odd rounds, A in even ones."""
    return "B" if round_ % 2 else "A"


class RoLora(FedAvg):
    """FedAvg over the head and, in turn, LoRA's B or A factors."""

    name = "rolora"
    needs = Needs(method="lora")

    def trains(self, name: str, round_: int) -> bool:
        """The head always; a LoRA factor in the rounds of its kind."""
        factor = lora_factor(name)
        return factor is None or factor == trained_factor(round_)
