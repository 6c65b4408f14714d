"""FedProx (Li et al., 2020): local training pulled back towards the round's global state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedpet.algorithms.base import ClientHook, PlainTraining
from fedpet.algorithms.fedavg import FedAvg
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import at_least
from fedpet.state import TrainableState


@dataclass(frozen=True)
class FedProxOptions(AlgorithmOptions):
    """FedProx's proximal weight."""

    mu: float = option(0.01, "FedProx: weight of the proximal term", at_least(0, "a number"))


class ProximalTerm(PlainTraining):
    """Adds ``mu / 2 * ||theta - theta_global||^2`` to the task loss."""

    def __init__(self, global_state: TrainableState, mu: float) -> None:
        self.global_state, self.mu = global_state, mu

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The task loss plus the proximal term."""
        drift = sum(((p - self.global_state[n]) ** 2).sum() for n, p in params.items())
        return task_loss + self.mu / 2 * drift


class FedProx(FedAvg):
    """FedAvg's server update; each client minimises its loss plus ``algorithm.mu`` x drift."""

    name = "fedprox"
    options = FedProxOptions
    config: FedProxOptions

    def client_hook(self, received: TrainableState, client_state: TrainableState) -> ClientHook:
        """The proximal term around the state the client received."""
        return ProximalTerm(received, self.config.mu)
