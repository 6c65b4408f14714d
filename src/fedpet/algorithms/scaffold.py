"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates correct client drift.

The server keeps a control ``c`` and each client its own ``c_k`` (zero until it is first
sampled). A client receives the global state ``x`` and ``c``, and takes ``K`` local SGD
steps on its loss plus ``<c - c_k, y>``, whose gradient is the corrected ``g + c - c_k``.
Then ``c_k+ = c_k - c + (x - y) / (K lr)`` (option II, with each tensor's learning rate),
and it sends ``y - x`` and ``(c_k+ - c_k) / n_k``. The server adds ``server_lr`` times the
example-weighted mean of ``y - x`` to ``x``, and ``(1 / N) sum_k (c_k+ - c_k)`` over the
round's clients to ``c`` (N: all clients): dividing by the example count ``n_k`` makes the
runtime's example-weighted sum the plain sum the paper averages. Controls travel both
ways, doubling the bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpet.algorithms.base import Aggregate, ClientHook, Needs, PlainAlgorithm, PlainTraining
from fedpet.state import TrainableState, add

CONTROL = "scaffold.c."


def model_part(state: TrainableState) -> TrainableState:
    """The tensors of ``state`` that are model parameters (not controls)."""
    return {n: t for n, t in state.items() if not n.startswith(CONTROL)}


def own_control(model: TrainableState, client_state: TrainableState) -> TrainableState:
    """The client's control ``c_k``: its saved state, or zero before its first round."""
    return client_state or {CONTROL + n: torch.zeros_like(t) for n, t in model.items()}


class DriftCorrection(PlainTraining):
    """Adds ``<c - c_k, theta>`` to the loss: the gradient gains ``c - c_k``."""

    def __init__(self, correction: TrainableState) -> None:
        self.correction = correction

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The task loss plus the linear correction term."""
        term = sum((p * self.correction[n]).sum() for n, p in params.items())
        return task_loss + term


class Scaffold(PlainAlgorithm):
    """Option II control variates; local training must be plain SGD at a constant rate."""

    name = "scaffold"
    # option II's control update assumes K plain SGD steps at one rate, unclipped
    needs = Needs(optimizer="sgd", constant_schedule=True, unclipped_gradients=True)
    allows_dp = False  # the controls carry single clients' gradients past any clip

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """The server control ``c``, zero."""
        return {CONTROL + n: torch.zeros_like(t) for n, t in global_state.items()}

    def download(
        self, global_state: TrainableState, server_state: TrainableState
    ) -> TrainableState:
        """The global state and the server control."""
        return {**global_state, **server_state}

    def client_hook(self, received: TrainableState, client_state: TrainableState) -> ClientHook:
        """The drift correction ``c - c_k``."""
        model = model_part(received)
        own = own_control(model, client_state)
        return DriftCorrection({n: received[CONTROL + n] - own[CONTROL + n] for n in model})

    def client_update(
        self,
        received: TrainableState,
        trained: TrainableState,
        client_state: TrainableState,
        steps: int,
        lrs: dict[str, float],
        num_examples: int,
    ) -> tuple[TrainableState, TrainableState]:
        """``(y - x, (c_k+ - c_k) / n_k)`` to send and ``c_k+`` to keep."""
        model = model_part(received)
        own = own_control(model, client_state)
        update: TrainableState = {}
        new_state: TrainableState = {}
        for n, x in model.items():
            delta = trained[n] - x
            c_new = own[CONTROL + n] - received[CONTROL + n] - delta / (steps * lrs[n])
            update[n] = delta
            update[CONTROL + n] = (c_new - own[CONTROL + n]) / num_examples
            new_state[CONTROL + n] = c_new
        return update, new_state

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """``x += server_lr * mean(y - x)``; ``c += sum_k (c_k+ - c_k) / N``."""
        mean = aggregate.mean()
        new_global = add(global_state, model_part(mean), self.server_lr)
        if aggregate.population < 1:
            raise ValueError("SCAFFOLD needs the number of clients (Aggregate.population)")
        new_server = {
            name: c + aggregate.weighted_sum[name] / aggregate.population
            for name, c in server_state.items()
        }
        return new_global, new_server
