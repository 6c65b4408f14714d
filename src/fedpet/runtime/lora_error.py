"""How far averaging LoRA's factors is from averaging the updates they stand for.

FedAvg averages B and A separately, but the model uses their product: the error is
``||sum_k p_k B_k A_k - (sum_k p_k B_k)(sum_k p_k A_k)||_F / ||sum_k p_k B_k A_k||_F`` per
adapted module, with ``p_k`` the FedAvg weights. It is accumulated as updates arrive, so a
round holds one product per module, not one per client.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedpet.state import TrainableState


class LoraError:
    """Streaming sums of ``w B_k A_k``, ``w B_k`` and ``w A_k`` over a round's clients.

    Parameters
    ----------
    pairs
        The LoRA modules' (A, B) factor names, as the LoRA method pairs them.
    frozen
        LoRA A matrices that are not in the trainable state (FFA-LoRA): every client has them.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], frozen: TrainableState) -> None:
        self.frozen = frozen
        self.pairs = list(pairs)
        self.products = {b: torch.zeros(()) for _, b in self.pairs}
        self.sum_a = {a: torch.zeros(()) for a, _ in self.pairs}
        self.sum_b = {b: torch.zeros(()) for _, b in self.pairs}
        self.weight = 0.0

    def _factor(self, name: str, trained: TrainableState) -> torch.Tensor:
        return (trained[name] if name in trained else self.frozen[name]).double()

    def add(self, trained: TrainableState, weight: float) -> None:
        """Fold in one client's trained state (received plus update) with its FedAvg weight."""
        for a, b in self.pairs:
            lora_a, lora_b = self._factor(a, trained), self._factor(b, trained)
            self.products[b] = self.products[b] + weight * (lora_b @ lora_a)
            self.sum_a[a] = self.sum_a[a] + weight * lora_a
            self.sum_b[b] = self.sum_b[b] + weight * lora_b
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
