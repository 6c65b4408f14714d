"""FFA-LoRA (Sun et al., 2024): LoRA's A frozen at its shared initialisation.

Every client keeps the same A (the seeded initialisation), so averaging the B matrices
averages the products exactly: ``sum_k p_k B_k A = (sum_k p_k B_k) A``. Only B and the
head are trained and sent: half of LoRA's bytes.
"""

from __future__ import annotations

from fedpet.algorithms.base import Needs
from fedpet.algorithms.fedavg import FedAvg
from fedpet.methods.lora import lora_factor


class FfaLora(FedAvg):
    """FedAvg over the trainable state without LoRA's A matrices."""

    name = "ffa-lora"
    needs = Needs(method="lora")

    def trainable(self, name: str) -> bool:
        """Everything but LoRA's A factors."""
        return lora_factor(name) != "A"
