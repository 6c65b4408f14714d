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
        self.scaling = scaling or {}
        self.middles = {r: (b.double(), a.double()) for r, (b, a) in (middles or {}).items()}
        self.products = {b: torch.zeros(()) for _, b in self.pairs}
        self.products |= {r: torch.zeros(()) for r in self.middles}
        self.sum_a = {a: torch.zeros(()) for a, _ in self.pairs}
        self.sum_b = {b: torch.zeros(()) for _, b in self.pairs}
        self.weight = 0.0

    def _factor(self, name: str, trained: TrainableState) -> torch.Tensor:
        return (trained[name] if name in trained else self.frozen[name]).double()

    def _update(self, state: TrainableState, a: str, b: str) -> torch.Tensor:
        """The module's weight update ``s (C + B A)`` in ``state`` (``C`` its correction)."""
        product = self._factor(b, state) @ self._factor(a, state)
        return self.scaling.get(b, 1.0) * (product + self._correction(state, b))

    @staticmethod
    def _correction(state: TrainableState, b: str) -> torch.Tensor:
        """The base correction ``state`` holds for the module of ``b`` (0 if none)."""
        merged = state.get(merged_name(b))
        return torch.zeros(()) if merged is None else merged.double()

    def add(self, trained: TrainableState, weight: float) -> None:
        """Fold in one client's trained state (received plus update) with its FedAvg weight."""
        for a, b in self.pairs:
            lora_a, lora_b = self._factor(a, trained), self._factor(b, trained)
            self.products[b] = self.products[b] + weight * (lora_b @ lora_a)
            self.sum_a[a] = self.sum_a[a] + weight * lora_a
            self.sum_b[b] = self.sum_b[b] + weight * lora_b
        for r in self.middles:
            self.products[r] = self.products[r] + weight * self._middle(trained, r)
        self.weight += weight

    def _middle(self, state: TrainableState, r: str) -> torch.Tensor:
        """The update ``B R A`` of LoRA-SB's module of ``r`` in ``state``."""
        up, down = self.middles[r]
        return up @ state[r].double() @ down

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
        """
        if self.weight <= 0:
            return None
        ratios = []
        for a, b in self.pairs:
            scale, corrected = self.scaling.get(b, 1.0), self._correction(before, b)
            mean = scale * (self.products[b] / self.weight + corrected)
            step = float(torch.linalg.matrix_norm(mean - self._update(before, a, b)))
            if step > 0:
                miss = float(torch.linalg.matrix_norm(mean - self._update(after, a, b)))
                ratios.append(miss / step)
        for r in self.middles:
            mean = self.products[r] / self.weight
            step = float(torch.linalg.matrix_norm(mean - self._middle(before, r)))
            if step > 0:
                miss = float(torch.linalg.matrix_norm(mean - self._middle(after, r)))
                ratios.append(miss / step)
        return sum(ratios) / len(ratios) if ratios else None
