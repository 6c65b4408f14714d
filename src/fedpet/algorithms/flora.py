"""FLoRA (Wang et al., NeurIPS 2024): stack the clients' LoRA factors, merge, start afresh.

The server stacks each module's factors of the round's clients along the rank,
``B_stack = [p_1 B_1, ..., p_K B_K]`` and ``A_stack = [A_1; ...; A_K]`` (``p_k`` the
example weights), so that ``B_stack A_stack = sum_k p_k B_k A_k`` exactly, whatever each
client's rank (``algorithm.ranks``, as HetLoRA and FlexLoRA take them). The product is
merged into the module's base weight and LoRA starts afresh: the global factors go back to
LoRA's initialisation (B zero), so the global model is the base plus the accumulated merge
``C`` (``<B>@merged``). The head is averaged as FedAvg does.

What a client is sent besides LoRA's start and the head:

- a client aggregated the round before holds the merge up to the round before that: it
  is sent the last round's stacks (``<factor>@stack``), whose size grows with the stacked
  rank ``sum_k r_k``, and merges them into the correction it keeps in its state;
- any other client (sampled for the first time, or back after missing rounds) is sent the
  accumulated dense merge ``C`` itself.

Each client keeps its merge ``C`` in its client state (a dense matrix per adapted module,
on disk between its rounds). The server needs each client's own factors, so neither DP
nor secure aggregation allows it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedpet.algorithms.base import Aggregate
from fedpet.algorithms.ranks import RankedClients
from fedpet.methods.lora import (
    corrections,
    factor_pairs,
    is_merged,
    is_stacked,
    lora_factor,
    merged_name,
    merged_plus,
    merges_base,
    stacked_name,
)
from fedpet.state import TrainableState, pad


def stack(
    factors: list[tuple[torch.Tensor, torch.Tensor]], weights: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B_stack, A_stack)`` of the clients' ``(B_k, A_k)`` with weights ``p_k``.

    Rank components a client did not train (zero in its B or in its A: ranks above its
    own) are left out: they add nothing to the product.
    """
    ups, downs = [], []
    for (up, down), weight in zip(factors, weights, strict=True):
        used = (up.abs().sum(0) > 0) & (down.abs().sum(1) > 0)
        ups.append(weight * up[:, used])
        downs.append(down[used])
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


class FLora(RankedClients):
    """Stacked aggregation of LoRA's factors, merged into the base each round."""

    name = "flora"
    keeps_updates: ClassVar[bool] = True
    shares_base: ClassVar[bool] = False  # each client merges into the merge it keeps

    def trains(self, name: str, round_: int) -> bool:
        """LoRA's factors and the head; never what is merged into the base."""
        return not merges_base(name)

    def resync(self, view: TrainableState, synced: bool) -> TrainableState:
        """The last stacks for a client in step, the accumulated merge for any other."""
        dropped = is_merged if synced else is_stacked
        return {n: t for n, t in view.items() if not dropped(n)}

    def bases(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """The received merge, or the merge the client holds plus the received stacks."""
        merged = corrections(received)
        for a, b in factor_pairs(received):
            if stacked_name(b) in received:
                product = received[stacked_name(b)] @ received[stacked_name(a)]
                merged[merged_name(b)] = merged_plus(client_state, b, product)
        return merged

    def client_update(
        self,
        received: TrainableState,
        trained: TrainableState,
        client_state: TrainableState,
        steps: int,
        lrs: dict[str, float],
        num_examples: int,
    ) -> tuple[TrainableState, TrainableState]:
        """The update; the client keeps the merge it trained on (zero before any)."""
        update, _ = super().client_update(received, trained, client_state, steps, lrs, num_examples)
        merged = self.bases(received, client_state)
        for a, b in factor_pairs(received):
            if merged_name(b) not in merged:
                shape = (received[b].shape[0], received[a].shape[1])
                merged[merged_name(b)] = received[b].new_zeros(shape)
        return update, merged

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """The client's trained LoRA factors at the full rank, and its other updates.

        The factors are zero above the client's rank.
        """
        view = self.client_view(download, client)
        factors = {n: view[n] + d for n, d in update.items() if lora_factor(n) is not None}
        return {**update, **pad(factors, download)}

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """Stack, merge, and start LoRA afresh; the head as FedAvg."""
        mean, lr = aggregate.mean(), self.server_lr
        total = sum(aggregate.weights)
        weights = [lr * w / total for w in aggregate.weights]
        new: TrainableState = {}
        for name, t in global_state.items():
            if lora_factor(name) is None and not merges_base(name):
                new[name] = t + lr * mean[name]
        for a, b in factor_pairs(global_state):
            factors = [(u[b], u[a]) for u in aggregate.updates]
            ups, downs = stack(factors, weights)
            new[merged_name(b)] = merged_plus(global_state, b, ups @ downs)
            new[stacked_name(b)], new[stacked_name(a)] = ups, downs
            new[b], new[a] = torch.zeros_like(global_state[b]), global_state[a]
        return new, server_state
