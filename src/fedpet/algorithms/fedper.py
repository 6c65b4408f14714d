"""FedPer (Arivazhagan et al., 2019): a shared body and a personal head per client.

Every client trains the whole trainable state; the task head stays with it and only the
rest is sent and averaged (FedAvg). A client first sampled starts its head from the
method's initialisation, the same on every client.
"""

from __future__ import annotations

from fedpet.algorithms.fedavg import FedAvg


class FedPer(FedAvg):
    """FedAvg over everything but the task head, which each client keeps."""

    name = "fedper"

    def personal(self, name: str, head: bool) -> bool:
        """The task head's tensors."""
        return head
