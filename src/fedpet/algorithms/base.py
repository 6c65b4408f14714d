"""The FL algorithm protocol: a client half (hooks into local training) and a pure server half."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from fedpet.state import TrainableState, zeros_like


class ClientHook(Protocol):
    """Adjusts one client's local training (e.g. a proximal term or a drift correction)."""

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The loss to minimise given the task loss."""
        ...


class PlainTraining:
    """The identity hook: local training minimises the task loss alone."""

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """Return the task loss unchanged."""
        return task_loss


class Aggregate:
    """Streaming weighted sum of client updates: a round never holds every update at once.

    Parameters
    ----------
    like
        A state with the names and shapes of the updates.
    """

    def __init__(self, like: TrainableState) -> None:
        self.weighted_sum = zeros_like(like)
        self.total_weight = 0.0
        self.num_clients = 0

    def add(self, delta: TrainableState, weight: float) -> None:
        """Fold in one client's update with its weight (its number of local examples)."""
        for name, acc in self.weighted_sum.items():
            acc.add_(delta[name], alpha=weight)
        self.total_weight += weight
        self.num_clients += 1

    def mean(self) -> TrainableState:
        """The weighted mean update."""
        if self.total_weight <= 0:
            raise ValueError("no client update was aggregated")
        return {n: t / self.total_weight for n, t in self.weighted_sum.items()}


class Algorithm(Protocol):
    """An FL algorithm: one object owning both halves.

    ``server_update`` is pure: ``(global_state, server_state, aggregate) ->
    (global_state, server_state)``, with no hidden state on the object.
    """

    name: str

    def client_hook(self, global_state: TrainableState) -> ClientHook:
        """The hook for a client starting from ``global_state``."""
        ...

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """Server state before round 1 (e.g. zero momenta); empty if none."""
        ...

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """New global and server state from the round's aggregate."""
        ...
