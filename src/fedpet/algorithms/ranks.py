"""Heterogeneous LoRA ranks: which rank each client trains and its cut of a full-rank state.

The shared model and the global state hold LoRA at the full rank ``method.r``. A client of
rank ``r`` holds the first ``r`` rows of each A and the first ``r`` columns of each B; the
rest of its model is zero. Zero rows of A and columns of B get zero gradients, so a client
trains exactly its rank and the zeros never leave it.
"""

from __future__ import annotations

from fedpet.config import AlgorithmConfig
from fedpet.state import TrainableState


def client_rank(ranks: tuple[int, ...], client: int) -> int | None:
    """Client ``client``'s LoRA rank: ``ranks`` assigned in turn; None (full) if empty."""
    return ranks[client % len(ranks)] if ranks else None


def truncate(state: TrainableState, rank: int | None) -> TrainableState:
    """The rank-``rank`` cut of ``state``: A's first rows, B's first columns, the rest whole."""
    if rank is None:
        return state
    out = {}
    for name, t in state.items():
        if "lora_A" in name:
            out[name] = t[:rank]
        elif "lora_B" in name:
            out[name] = t[:, :rank]
        else:
            out[name] = t
    return out


class RankedClients:
    """Algorithm half shared by HetLoRA and FlexLoRA: each client holds its rank's cut."""

    options: AlgorithmConfig

    def client_view(self, state: TrainableState, client: int) -> TrainableState:
        """The cut of ``state`` at the client's rank (``algorithm.ranks``)."""
        return truncate(state, client_rank(self.options.ranks, client))
