"""Local training alone: the "no federation" baseline of a personalisation study.

Every trained tensor stays with its client, so nothing is sent or aggregated and each
client's model is what it trained on its own data in the rounds it was sampled, starting
from the method's initialisation. With one client it is centralized training.
"""

from __future__ import annotations

from fedpet.algorithms.fedavg import FedAvg


class Local(FedAvg):
    """Every tensor personal: an empty update, an unchanged global state."""

    name = "local"

    def personal(self, name: str, head: bool) -> bool:
        """Every one."""
        return True
