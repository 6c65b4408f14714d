"""Heterogeneous LoRA ranks: which rank each client trains and its cut of a full-rank state.

The shared model and the global state hold LoRA at the full rank ``method.r``. A client of
rank ``r`` holds the first ``r`` rows of each A and the first ``r`` columns of each B; the
rest of its model is zero. Zero rows of A and columns of B get zero gradients, so a client
trains exactly its rank and the zeros never leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fedpet.algorithms.base import Needs, PlainAlgorithm
from fedpet.config import AlgorithmOptions, Config, option
from fedpet.config.fields import at_least, each
from fedpet.errors import FedpetError
from fedpet.methods.lora import rank_axis
from fedpet.state import TrainableState


@dataclass(frozen=True)
class RankedOptions(AlgorithmOptions):
    """The LoRA ranks of HetLoRA's and FlexLoRA's clients."""

    ranks: tuple[int, ...] = option(
        (),
        "LoRA ranks given to the clients in turn (client k: ranks[k % len]), each at most "
        "method.r; empty: every client at method.r",
        each(at_least(1)),
    )


def client_rank(ranks: tuple[int, ...], client: int) -> int | None:
    """Client ``client``'s LoRA rank: ``ranks`` assigned in turn; None (full) if empty."""
    return ranks[client % len(ranks)] if ranks else None


def truncate(state: TrainableState, rank: int | None) -> TrainableState:
    """The rank-``rank`` cut of ``state``: A's first rows, B's first columns, the rest whole.

    The LoRA method says which tensors are factors and along which axis their rank runs.
    """
    if rank is None:
        return state
    out = {}
    for name, t in state.items():
        axis = rank_axis(name)
        out[name] = t if axis is None else t.narrow(axis, 0, rank)
    return out


class RankedClients(PlainAlgorithm):
    """Algorithm half shared by HetLoRA and FlexLoRA: each client holds its rank's cut.

    They reshape single updates, which neither DP's clip nor a secure sum allows.
    """

    options: ClassVar[type[AlgorithmOptions]] = RankedOptions
    config: RankedOptions
    needs: ClassVar[Needs] = Needs(method="lora")
    allows_dp: ClassVar[bool] = False
    allows_secure_aggregation: ClassVar[bool] = False

    def check(self, cfg: Config) -> None:
        """Every rank is at most the global rank, ``method.r``."""
        r = getattr(cfg.method, "r", None)
        if r is not None and not all(k <= r for k in self.config.ranks):
            raise FedpetError(
                f"algorithm.ranks = {list(self.config.ranks)} is not allowed: ranks from 1 to "
                f"method.r = {r} (the global rank)"
            )

    def client_info(self, client: int) -> dict[str, Any]:
        """The client's LoRA rank, where ranks are given."""
        rank = client_rank(self.config.ranks, client)
        return {} if rank is None else {"lora_rank": rank}

    def client_view(self, state: TrainableState, client: int) -> TrainableState:
        """The cut of ``state`` at the client's rank (``algorithm.ranks``)."""
        return truncate(state, client_rank(self.config.ranks, client))
