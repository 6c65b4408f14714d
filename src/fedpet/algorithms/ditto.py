"""Ditto (Li et al., 2021): a personal model per client, pulled toward the global one.

Each sampled client trains the global model as FedAvg does and sends that update; then it
trains its own copy ``v_k`` of the whole trainable state on its loss plus
``lam / 2 * ||v_k - w||^2``, where ``w`` is the global state it received, and keeps it.
A client first sampled starts its copy from ``w``. ``lam`` = 0 is local training from the
global state; a large ``lam`` holds the copy at the global model.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedpet.algorithms.base import ClientHook
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.fedprox import ProximalTerm
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import at_least
from fedpet.state import TrainableState


@dataclass(frozen=True)
class DittoOptions(AlgorithmOptions):
    """Ditto's pull toward the global model."""

    lam: float = option(
        0.1, "Ditto: weight of the personal model's pull toward the global", at_least(0, "a number")
    )


class Ditto(FedAvg):
    """FedAvg for the global model; each client's personal copy trained with a proximal pull."""

    name = "ditto"
    options = DittoOptions
    config: DittoOptions
    personal_copy = True

    def personal_training(self, received: TrainableState) -> ClientHook:
        """The proximal term of strength ``algorithm.lam`` around the received state."""
        return ProximalTerm(received, self.config.lam)
