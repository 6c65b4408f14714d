"""Modules that own trainable tensors, applied per client in a cohort's batched pass.

:func:`owners` finds the outermost modules owning a method's trainable tensors (LoRA's
factors, an adapter's projections, a biased layer, the head, a prompt encoder);
:func:`per_client` wraps each in :class:`PerClient` while a cohort trains
(:mod:`fedpet.cohort`): its input is split into the clients' rows, and each client's rows
meet that client's own tensors, one batched product for a linear layer and
``torch.func.vmap`` of ``torch.func.functional_call`` for any other module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn


class PerClient(nn.Module):
    """A module that owns trainable tensors, applied to each client's rows with its own."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.stacked: dict[str, torch.Tensor] = {}  # name in inner -> [clients, ...]

    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:
        """The inner module's attributes (its layer's ``weight.dtype``, as peft reads it)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)  # type: ignore[no-any-return]

    def forward(self, *args: object, **kwargs: object) -> object:
        """The inner module on each client's rows of every tensor input, with its tensors.

        A linear layer (LoRA's factors, an adapter's projections, a head, a biased layer) is
        one batched product over the clients; any other module runs under ``vmap``.
        """
        clients = len(next(iter(self.stacked.values())))
        if type(self.inner) is nn.Linear and len(args) == 1 and not kwargs:
            assert isinstance(args[0], torch.Tensor)
            return self.linear(args[0], clients)

        def split(x: object) -> object:
            return x.unflatten(0, (clients, -1)) if isinstance(x, torch.Tensor) else x

        def dims(x: object) -> int | None:
            return 0 if isinstance(x, torch.Tensor) else None

        def apply(
            params: dict[str, torch.Tensor], a: tuple[object, ...], kw: dict[str, object]
        ) -> object:
            return torch.func.functional_call(self.inner, params, a, kw)

        inputs = (tuple(map(split, args)), {k: split(v) for k, v in kwargs.items()})
        in_dims = (0, tuple(map(dims, args)), {k: dims(v) for k, v in kwargs.items()})
        out = torch.func.vmap(apply, in_dims=in_dims, randomness="error")(self.stacked, *inputs)
        return torch.utils._pytree.tree_map(
            lambda t: t.flatten(0, 1) if isinstance(t, torch.Tensor) else t, out
        )

    def linear(self, x: torch.Tensor, clients: int) -> torch.Tensor:
        """``inner`` as ``x W^T + b`` on each client's rows, W or b the client's where trained."""
        inner = self.inner
        assert isinstance(inner, nn.Linear)
        weight = self.stacked.get("weight", inner.weight)
        bias = self.stacked.get("bias", inner.bias)
        rows = x.unflatten(0, (clients, -1))
        flat = rows.flatten(1, -2)  # [clients, tokens, in]
        if weight.dim() == 3:
            out = torch.bmm(flat, weight.to(flat.dtype).transpose(1, 2))
        else:
            out = flat @ weight.to(flat.dtype).T
        if bias is not None:
            out = out + (bias[:, None] if bias.dim() == 2 else bias).to(out.dtype)
        return out.view(*rows.shape[:-1], -1).flatten(0, 1)


def owners(model: nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """The outermost modules that own the trainable tensors ``names``, with their tensors.

    A tensor's owner is the module it is an attribute of, or that module's parent where it
    is a container (peft's ``ParameterDict`` of IA3 scales); an owner inside another owner
    is left to it.
    """
    modules = dict(model.named_modules())
    found: dict[str, list[str]] = {}
    for name in names:
        path = name.rpartition(".")[0]
        while isinstance(modules[path], (nn.ParameterDict, nn.ParameterList)):
            path = path.rpartition(".")[0]
        found.setdefault(path, []).append(name)
    outer: dict[str, list[str]] = {}
    for path, held in sorted(found.items()):
        parent = next((o for o in outer if path.startswith(o + ".") or o == ""), None)
        if parent is None:
            outer[path] = list(held)
        else:
            outer[parent] += held
    return outer


@contextmanager
def per_client(model: nn.Module, found: dict[str, list[str]]) -> Iterator[dict[str, PerClient]]:
    """``model`` with each owner in ``found`` (:func:`owners`) wrapped in :class:`PerClient`."""
    wrapped: dict[str, PerClient] = {}
    prompted: list[Any] = [m for m in model.modules() if _repeats_one_prompt(m)]
    try:
        for peft_model in prompted:  # each row its client's prompt, not one repeated
            peft_model.get_prompt = partial(_prompt_per_row, peft_model)
        for path in found:
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            wrapped[path] = PerClient(getattr(parent, attr))
            setattr(parent, attr, wrapped[path])
        yield {path: wrapped[path] for path in found}
    finally:
        for peft_model in prompted:
            del peft_model.get_prompt
        for path, wrapper in wrapped.items():
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, wrapper.inner)


def _repeats_one_prompt(module: nn.Module) -> bool:
    """Whether ``module`` is a peft model that computes one soft prompt and repeats it."""
    from peft import PeftModel, PeftType

    if not isinstance(module, PeftModel):
        return False
    kind = module.peft_config[module.active_adapter].peft_type
    return kind in (PeftType.PROMPT_TUNING, PeftType.P_TUNING)


def _prompt_per_row(peft_model: Any, batch_size: int, **_: object) -> torch.Tensor:
    """Prompt tuning's soft prompts computed for every row, as peft does before it repeats one.

    The prompt encoder (a :class:`PerClient` in a cohort) then sees each client's rows.
    """
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    tokens = peft_model.prompt_tokens[peft_model.active_adapter]
    tokens = tokens.unsqueeze(0).expand(batch_size, -1).to(encoder.embedding.weight.device)
    return encoder(tokens)  # type: ignore[no-any-return]
