"""FedSA-LoRA (Guo et al., ICLR 2025): LoRA's A factors shared, each client's B its own.

The A factors learn what the clients have in common and are averaged (FedAvg, with the
head and any other trained tensor); the B factors stay with each client. A client first
sampled starts its B from LoRA's initialisation (zero), as every client does in round 1.
Half of LoRA's bytes, like FFA-LoRA, but both factors train.
"""

from __future__ import annotations

from fedpet.algorithms.base import Needs
from fedpet.algorithms.fedavg import FedAvg
from fedpet.methods.lora import lora_factor


class FedSaLora(FedAvg):
    """FedAvg over everything but LoRA's B factors, which each client keeps."""

    name = "fedsa-lora"
    needs = Needs(method="lora")

    def personal(self, name: str, head: bool) -> bool:
        """LoRA's B factors."""
        return lora_factor(name) == "B"
