"""HetLoRA (Cho et al., EMNLP 2024): clients train LoRA at their own ranks, zero-padded.

Client ``k`` of rank ``r_k`` receives the first ``r_k`` rows of each A and columns of each B,
and sends its update at that size (its bytes follow its rank). The server pads every update
with zeros to the full rank and takes a weighted mean:

- ``algorithm.weighting = norm`` (the paper's sparsity-weighted aggregation): client ``k``
  weighs ``||B_k A_k||_F / sum_j ||B_j A_j||_F``, the Frobenius norm of its trained LoRA
  weight update over all modules, normalised over the round's clients;
- ``algorithm.weighting = examples``: by its number of examples, as FedAvg.

With ``algorithm.prune_gamma`` set (the paper's rank self-pruning), local training adds
``prune_lambda * sum_modules ||B[:, g:r]||_F ||A[g:r]||_F`` to the loss, ``r`` the client's
rank and ``g = floor(prune_gamma * r)``; if that tail norm ends smaller than it started, the
client prunes its rank to ``g``. Its rank lives in its client state: from then on it starts
those components at zero and trains only its rank, and its update takes them to zero in
the padded mean. The download and the upload keep the layout of its assigned rank
(``algorithm.ranks``): the server does not learn a pruned rank, so pruning saves the
client's compute, not bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedpet.algorithms.base import Aggregate, ClientHook, PlainTraining
from fedpet.algorithms.ranks import RankedClients, RankedOptions
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import above, one_of, or_null, within
from fedpet.methods.lora import factor_pairs
from fedpet.state import TrainableState, pad, subtract

NORM = "hetlora.norm"
"""The name of the 0-dim tensor that carries a client's ``||B_k A_k||_F`` in its view."""
RANK = "hetlora.rank"
"""The client state's name of a client's pruned LoRA rank."""


@dataclass(frozen=True)
class HetLoraOptions(RankedOptions):
    """HetLoRA's weighting and rank self-pruning."""

    weighting: str = option(
        "norm",
        "HetLoRA: weigh clients by the norm of their LoRA update (norm) or by examples",
        one_of("norm", "examples"),
    )
    prune_gamma: float | None = option(
        None,
        "HetLoRA: rank self-pruning keeps floor(gamma * rank) when the tail shrinks (null: off)",
        or_null(within(0, 1, "a number in (0, 1)", low_open=True, high_open=True)),
    )
    prune_lambda: float = option(
        0.01, "HetLoRA: weight of the self-pruning regulariser on the tail", above(0)
    )


def tail(rank: int, gamma: float) -> int:
    """The first pruned component of a rank-``rank`` client: ``floor(gamma * rank)``, >= 1."""
    return max(1, math.floor(gamma * rank))


def tail_norm(state: dict[str, torch.Tensor], rank: int, gamma: float) -> torch.Tensor:
    """``sum_modules ||B[:, g:rank]||_F ||A[g:rank]||_F`` (``g`` from :func:`tail`)."""
    g = tail(rank, gamma)
    terms = [
        torch.linalg.matrix_norm(state[b][:, g:rank]) * torch.linalg.matrix_norm(state[a][g:rank])
        for a, b in factor_pairs(state)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@dataclass
class TailRegulariser(PlainTraining):
    """The self-pruning regulariser on the components from ``tail(rank)`` to ``rank``."""

    rank: int
    gamma: float
    lam: float

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The task loss plus ``lam`` times the tail norm."""
        return task_loss + self.lam * tail_norm(dict(params), self.rank, self.gamma)


class HetLora(RankedClients):
    """Zero-padded updates of clients with heterogeneous LoRA ranks, norm- or example-weighted."""

    name = "hetlora"
    options: ClassVar[type[AlgorithmOptions]] = HetLoraOptions
    config: HetLoraOptions

    @property
    def keeps_updates(self) -> bool:  # type: ignore[override]
        """Norm weighting needs every update with its norm."""
        return self.config.weighting == "norm"

    def _rank(self, received: TrainableState, client_state: TrainableState) -> int:
        """The client's current rank: its pruned one, or that of what it received."""
        held = client_state.get(RANK)
        full = next((received[a].shape[0] for a, _ in factor_pairs(received)), 0)
        return full if held is None else min(full, int(held))

    def local_start(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """What it received, zero above the client's pruned rank."""
        rank = self._rank(received, client_state)
        start = dict(received)
        for a, b in factor_pairs(received):
            start[a] = torch.cat([received[a][:rank], torch.zeros_like(received[a][rank:])])
            start[b] = torch.cat(
                [received[b][:, :rank], torch.zeros_like(received[b][:, rank:])], dim=1
            )
        return start

    def client_hook(self, received: TrainableState, client_state: TrainableState) -> ClientHook:
        """The tail regulariser where pruning is on."""
        gamma = self.config.prune_gamma
        if gamma is None:
            return PlainTraining()
        return TailRegulariser(self._rank(received, client_state), gamma, self.config.prune_lambda)

    def client_update(
        self,
        received: TrainableState,
        trained: TrainableState,
        client_state: TrainableState,
        steps: int,
        lrs: dict[str, float],
        num_examples: int,
    ) -> tuple[TrainableState, TrainableState]:
        """The update; with pruning, the client's rank, cut where its tail shrank."""
        gamma = self.config.prune_gamma
        if gamma is None:
            return subtract(trained, received), {}
        rank = self._rank(received, client_state)
        start = self.local_start(received, client_state)
        if rank > 1 and tail_norm(trained, rank, gamma) < tail_norm(start, rank, gamma):
            rank = tail(rank, gamma)
            trained = self.local_start(trained, {RANK: torch.tensor(rank)})
        return subtract(trained, received), {RANK: torch.tensor(rank)}

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """The update zero-padded to the full rank; with norm weighting, its norm too."""
        padded = pad(update, download)
        if self.config.weighting != "norm":
            return padded
        view = self.client_view(download, client)
        square = sum(
            float(torch.linalg.matrix_norm((view[b] + update[b]) @ (view[a] + update[a])) ** 2)
            for a, b in factor_pairs(update)
        )
        return {**padded, NORM: torch.tensor(math.sqrt(square))}

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """``theta + server_lr * sum_k p_k delta_k``, ``p_k`` by norm or by examples."""
        if self.config.weighting != "norm":
            mean = aggregate.mean()
        else:
            norms = [float(u[NORM]) for u in aggregate.updates]
            total = sum(norms)
            if total > 0:
                weights = [n / total for n in norms]
            else:  # nobody moved: the examples decide
                weights = [w / sum(aggregate.weights) for w in aggregate.weights]
            mean = {
                name: torch.stack(
                    [w * u[name] for w, u in zip(weights, aggregate.updates, strict=True)]
                ).sum(0)
                for name in global_state
            }
        lr = self.server_lr
        return {n: t + lr * mean[n] for n, t in global_state.items()}, server_state
