"""FlexLoRA (Bai et al., 2024): average the clients' LoRA products, then SVD back to rank.

Client ``k`` of rank ``r_k`` trains the first ``r_k`` rows of each A and columns of each B,
as in HetLoRA, but the server averages the full products: it aggregates
``B_k A_k - B A`` (the change of the module's weight update ``B A``) with the FedAvg
weights, adds ``server_lr`` times the mean to ``B A``, and factors the result by a truncated
SVD, ``B = U_r S_r`` and ``A = V_r^T``, at the full rank ``r``. Singular values come in
decreasing order, so a client's cut of the new state is the best approximation of the
averaged product at its own rank. Other tensors (the head) are averaged as FedAvg does.
"""

from __future__ import annotations

import torch

from fedpet.algorithms.base import Aggregate
from fedpet.algorithms.ranks import RankedClients
from fedpet.methods.lora import down_factor, factor_pairs, lora_factor
from fedpet.state import TrainableState


def product_name(up: str) -> str:
    """The aggregate's name for the product ``B A`` of the module of the B factor ``up``."""
    return f"{up}@product"


def product_changes(
    download: TrainableState, view: TrainableState, update: TrainableState
) -> TrainableState:
    """Per LoRA module of ``update``, ``B_k A_k - B A`` by :func:`product_name`.

    ``B_k A_k`` is the client's trained product (its ``view`` of the download plus its
    update), ``B A`` the download's.
    """
    out = {}
    for a, b in factor_pairs(update):
        mine = (view[b] + update[b]) @ (view[a] + update[a])
        out[product_name(b)] = mine - download[b] @ download[a]
    return out


def best_rank(product: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_r S_r, V_r^T)``: the best rank-``rank`` factors of ``product`` (Eckart-Young).

    Both contiguous: LAPACK's ``V^T`` comes column-major, and a state must hold the same
    layout as the checkpoint it is read back from, or arithmetic on it rounds differently.
    """
    u, s, vh = torch.linalg.svd(product.double(), full_matrices=False)
    up = (u[:, :rank] * s[:rank]).to(product.dtype).contiguous()
    return up, vh[:rank].to(product.dtype).contiguous()


class FlexLora(RankedClients):
    """Product averaging and truncated SVD for clients with heterogeneous LoRA ranks."""

    name = "flexlora"

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """Per LoRA module, ``B_k A_k - B A``; other tensors' updates as they are."""
        others = {n: d for n, d in update.items() if lora_factor(n) is None}
        return {**product_changes(download, self.client_view(download, client), update), **others}

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """``B A + server_lr * mean`` factored at the full rank; the rest as FedAvg."""
        mean = aggregate.mean()
        new: TrainableState = {}
        for name, t in global_state.items():
            factor = lora_factor(name)
            if factor == "B":
                a = down_factor(name)
                product = t @ global_state[a] + self.server_lr * mean[product_name(name)]
                new[name], new[a] = best_rank(product, t.shape[1])
            elif factor is None:
                new[name] = t + self.server_lr * mean[name]
        return {name: new[name] for name in global_state}, server_state
