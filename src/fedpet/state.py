"""Trainable state: the plain ``dict[str, Tensor]`` that is sent, aggregated and checkpointed.

The model's trainable parameters are looked up once (:func:`trainable_parameters`); switching
the shared model to another client's or the server's state is an in-place ``copy_`` over that
map (:func:`load_`), so optimizers built over the parameters stay valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

TrainableState = dict[str, torch.Tensor]
Schema = tuple[tuple[str, tuple[int, ...]], ...]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Map name -> parameter for every parameter that requires grad, in a stable (sorted) order."""
    return dict(sorted((n, p) for n, p in model.named_parameters() if p.requires_grad))


def extract(params: dict[str, nn.Parameter]) -> TrainableState:
    """Detached fp32 CPU copies of the parameters' current values, wherever they live."""
    return {name: p.detach().to("cpu", torch.float32, copy=True) for name, p in params.items()}


@torch.no_grad()
def load_(params: dict[str, nn.Parameter], state: TrainableState) -> None:
    """Copy ``state`` into the parameters in place, onto their device (keys must match)."""
    if params.keys() != state.keys():
        missing = sorted(params.keys() - state.keys())[:3]
        extra = sorted(state.keys() - params.keys())[:3]
        raise KeyError(f"state does not match the model: missing {missing}, unexpected {extra}")
    for name, p in params.items():
        p.copy_(state[name])


def schema(state: Mapping[str, torch.Tensor]) -> Schema:
    """Names and shapes, in order: what both ends of the wire agree on before any round."""
    return tuple((name, tuple(t.shape)) for name, t in state.items())


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of all of a state's values together (summed in float64)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def subtract(a: TrainableState, b: TrainableState) -> TrainableState:
    """``a - b`` per tensor."""
    return {name: a[name] - b[name] for name in a}


def add(a: TrainableState, b: TrainableState, scale: float = 1.0) -> TrainableState:
    """``a + scale * b`` per tensor."""
    return {name: a[name] + scale * b[name] for name in a}


def zeros_like(state: TrainableState) -> TrainableState:
    """A state of zeros with the same names and shapes."""
    return {name: torch.zeros_like(t) for name, t in state.items()}


def pad(state: TrainableState, like: Mapping[str, torch.Tensor]) -> TrainableState:
    """``state`` zero-padded at the end of each dimension to the shapes of ``like``."""
    out = {}
    for name, t in state.items():
        target = like[name].shape
        if t.shape == target:
            out[name] = t
        else:
            full = t.new_zeros(target)
            full[tuple(slice(0, n) for n in t.shape)] = t
            out[name] = full
    return out


def same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``a`` and ``b`` hold the same names with equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
