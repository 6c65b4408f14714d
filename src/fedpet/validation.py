"""Checks on a client update before it is aggregated: a bad update is rejected, with a reason."""

from __future__ import annotations

import torch

from fedpet.state import Schema, TrainableState, l2_norm


def update_problem(update: TrainableState, layout: Schema, max_norm: float | None) -> str | None:
    """Why ``update`` must not be aggregated, or None when it may.

    Checks, in order: the names match the agreed schema exactly, every tensor has its shape
    and a floating dtype, every value is finite, and the update's L2 norm is at most
    ``max_norm`` (when set).
    """
    expected = dict(layout)
    missing = sorted(expected.keys() - update.keys())
    unknown = sorted(update.keys() - expected.keys())
    if missing:
        return f"missing tensors {missing[:3]}"
    if unknown:
        return f"unknown tensors {unknown[:3]}"
    for name, shape in layout:
        tensor = update[name]
        if tuple(tensor.shape) != shape:
            return f"{name} has shape {tuple(tensor.shape)}, expected {shape}"
        if not tensor.is_floating_point():
            return f"{name} has dtype {tensor.dtype}, expected a floating dtype"
        if not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or Inf"
    if max_norm is not None and (norm := l2_norm(update)) > max_norm:
        return f"update norm {norm:.4g} exceeds federation.max_update_norm {max_norm:g}"
    return None
