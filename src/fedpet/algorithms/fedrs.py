"""FedRS (Li & Zhan, KDD 2021): a restricted softmax for the classes a client does not hold.

A modifier of any algorithm's local training (``algorithm.fedrs``): the client scales the
logits of its missing classes by ``alpha`` in [0, 1] before the loss, so that its update
pushes their weights less. It is a client hook around the algorithm's own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedpet.algorithms.base import ClientHook


def class_scale(alpha: float, num_labels: int, labels: np.ndarray) -> torch.Tensor:
    """One logit factor per class: 1 for the classes in ``labels``, ``alpha`` for the rest."""
    scale = torch.full((num_labels,), alpha)
    scale[np.unique(labels)] = 1.0
    return scale


class RestrictedSoftmax:
    """Wraps a client hook: the logits scaled per class, then the wrapped hook's."""

    def __init__(self, inner: ClientHook, scale: torch.Tensor) -> None:
        self.inner, self.scale = inner, scale

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The wrapped hook's logits of the scaled ones."""
        return self.inner.logits(logits * self.scale.to(logits.device))

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The wrapped hook's loss."""
        return self.inner.loss(task_loss, params)


def restricted(
    hook: ClientHook, alpha: float | None, num_labels: int, labels: np.ndarray
) -> ClientHook:
    """``hook`` under FedRS's restricted softmax for a client holding ``labels``.

    With ``alpha`` None (FedRS off), ``hook`` itself.
    """
    if alpha is None:
        return hook
    return RestrictedSoftmax(hook, class_scale(alpha, num_labels, labels))
