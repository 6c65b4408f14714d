"""How far a round's new global LoRA model is from the mean of its clients' models.

Two measures, per adapted module, averaged over the modules:

- ``lora_aggregation_error`` (:meth:`LoraError.error`), FedAvg's own: how far averaging B
  and A separately is from averaging the products they stand for,
  ``||sum_k p_k B_k A_k - (sum_k p_k B_k)(sum_k p_k A_k)||_F / ||sum_k p_k B_k A_k||_F``,
  with ``p_k`` the example weights.
- ``aggregation_error`` (:meth:`LoraError.dense_error`), any rule's: the module's effective
  weight update ``W = s (C + B A)`` (``s`` LoRA's scale, ``C`` the correction merged into
  the base weight, where the rule merges one) of each client after local training, of
  the global model before the round and after the server's update, compared as
  ``||mean_k W_k - W_after||_F / ||mean_k W_k - W_before||_F``: the error in units of the
  clients' mean step. It is computed from the clients' trained factors and the global
  states alone, whatever the rule did in between, so it checks the rule's exactness.

Both are accumulated as updates arrive, so a round holds one product per module, not one
per client.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedpet.methods.lora import merged_name
from fedpet.state import TrainableState


class LoraError:
    """Streaming sums of ``w B_k A_k``, ``w B_k`` and ``w A_k`` over a round's clients.

    Parameters
    ----------
    pairs
        The LoRA modules' (A, B) factor names, as the LoRA method pairs them.
    frozen
        LoRA A matrices that are not in the trainable state (FFA-LoRA): every client has them.
    scaling
        Each B factor's LoRA scale (1 where not given).
    middles
        LoRA-SB's trained ``R`` factors (by name) with the frozen ``(B, A)`` around them:
        their modules' updates are ``B R A`` (in :meth:`dense_error` only).
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]],
        frozen: TrainableState,
        scaling: dict[str, float] | None = None,
        middles: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.frozen = frozen
        self.pairs = list(pairs)
        self.downs = {b: a for a, b in self.pairs}
        self.scaling = scaling or {}
        self.middles = {r: (b.double(), a.double()) for r, (b, a) in (middles or {}).items()}
        # per module (by its B factor, or LoRA-SB's R): the sum of w times its product
        self.products = {key: torch.zeros(()) for key in [*self.downs, *self.middles]}
        self.sum_a = {a: torch.zeros(()) for a, _ in self.pairs}
        self.sum_b = {b: torch.zeros(()) for _, b in self.pairs}
        self.weight = 0.0

    def _factor(self, name: str, trained: TrainableState) -> torch.Tensor:
        return (trained[name] if name in trained else self.frozen[name]).double()

    def _product(self, state: TrainableState, key: str) -> torch.Tensor:
        """The module's product in ``state``: ``B A``, or LoRA-SB's ``B R A``."""
        if key in self.middles:
            up, down = self.middles[key]
            return up @ state[key].double() @ down
        return self._factor(key, state) @ self._factor(self.downs[key], state)

    @staticmethod
    def _correction(state: TrainableState, b: str) -> torch.Tensor:
        """The base correction ``state`` holds for the module of ``b`` (0 if none)."""
        merged = state.get(merged_name(b))
        return torch.zeros(()) if merged is None else merged.double()

    def add(self, trained: TrainableState, weight: float) -> None:
        """Fold in one client's trained state (received plus update) with its FedAvg weight."""
        for key in self.products:
            self.products[key] = self.products[key] + weight * self._product(trained, key)
        for a, b in self.pairs:
            self.sum_a[a] = self.sum_a[a] + weight * self._factor(a, trained)
            self.sum_b[b] = self.sum_b[b] + weight * self._factor(b, trained)
        self.weight += weight

    def error(self) -> float | None:
        """Mean relative error over the modules; None before any update or LoRA module."""
        if self.weight <= 0:
            return None
        ratios = []
        for a, b in self.pairs:
            exact = self.products[b] / self.weight
            norm = float(torch.linalg.matrix_norm(exact))
            if norm > 0:
                averaged = (self.sum_b[b] / self.weight) @ (self.sum_a[a] / self.weight)
                ratios.append(float(torch.linalg.matrix_norm(exact - averaged)) / norm)
        return sum(ratios) / len(ratios) if ratios else None

    def dense_error(self, before: TrainableState, after: TrainableState) -> float | None:
        """The global model's error after the round, in units of the clients' mean step.

        ``before`` is the global state the clients started from, ``after`` the server's new
        one. None before any update; modules whose clients did not move are left out.
        Each module's weight update is ``s (C + product)``; the clients trained on the
        correction ``C`` of ``before``.
        """
        if self.weight <= 0:
            return None
        ratios = []
        for key, summed in self.products.items():
            scale, held = self.scaling.get(key, 1.0), self._correction(before, key)
            mean = scale * (summed / self.weight + held)
            start = scale * (self._product(before, key) + held)
            step = float(torch.linalg.matrix_norm(mean - start))
            if step > 0:
                end = scale * (self._product(after, key) + self._correction(after, key))
                ratios.append(float(torch.linalg.matrix_norm(mean - end)) / step)
        return sum(ratios) / len(ratios) if ratios else None
