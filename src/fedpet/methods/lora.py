"""LoRA (Hu et al., 2022) through peft: low-rank updates B A of the targeted linear layers.

The method owns LoRA's layout in a trainable state: which tensors are factors, how they
pair and along which axis their rank runs (:func:`lora_factor`, :func:`factor_pairs`,
:func:`rank_axis`), and how a dense correction merged into a module's base weight is named
and set (:func:`merged_name`, :class:`BaseWeights`). The LoRA-aware algorithms and the
aggregation-error metric ask it; no other module reads LoRA's parameter names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedpet.config import MethodOptions, option
from fedpet.config.fields import at_least, within
from fedpet.errors import FedpetError
from fedpet.methods.base import MethodBase, attach_peft, uses_conv1d

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

FACTORS = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}
"""peft's LoRA factors (its ``LoraLayer.adapter_layer_names``): each down factor ``A``
(rank x in) with its up factor ``B`` (out x rank); a linear layer's, or an embedding's.
DoRA's magnitude vector (``lora_magnitude_vector``) is no factor: it has no rank."""
_UP = {up: down for down, up in FACTORS.items()}


def lora_factor(name: str) -> str | None:
    """``"A"`` or ``"B"`` for a LoRA factor's parameter name (its module path), else None.

    A base correction's or stacked factor's name (:func:`merges_base`) is no factor's.
    """
    if merges_base(name):
        return None
    parts = name.split(".")
    if any(p in FACTORS for p in parts):
        return "A"
    return "B" if any(p in _UP for p in parts) else None


def rank_axis(name: str) -> int | None:
    """The axis LoRA's rank runs along in the tensor ``name``: A's rows, B's columns."""
    return {"A": 0, "B": 1, None: None}[lora_factor(name)]


def down_factor(up: str) -> str:
    """The name of the A factor paired with the B factor ``up``."""
    return ".".join(_UP.get(p, p) for p in up.split("."))


def factor_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """The (A, B) name pairs of the LoRA modules among ``names``, by their B factors."""
    return [(down_factor(b), b) for b in names if lora_factor(b) == "B"]


def adapted_module(factor: str) -> tuple[str, str]:
    """The path of the LoRA layer a factor's parameter belongs to, and its adapter's name."""
    parts = factor.split(".")
    at = next(i for i, p in enumerate(parts) if p in FACTORS or p in _UP)
    return ".".join(parts[:at]), parts[at + 1]


def scalings(model: nn.Module, ups: Iterable[str]) -> dict[str, float]:
    """Each B factor's LoRA scale (peft's ``scaling``, ``lora_alpha / r``) in ``model``.

    The module's weight update is ``scale * B A``.
    """
    from peft.tuners.lora import LoraLayer

    out = {}
    for up in ups:
        module, adapter = adapted_module(up)
        layer = model.get_submodule(module)
        assert isinstance(layer, LoraLayer), f"{module} is no LoRA layer"
        out[up] = float(layer.scaling[adapter])
    return out


MERGED = "@merged"
"""The suffix of a base correction's name: ``<B factor>@merged`` is the dense matrix (of the
product ``B A``'s shape and units) merged into the base weight of that factor's module."""


def merged_name(up: str) -> str:
    """The name of the base correction of the module of the B factor ``up``."""
    return up + MERGED


def is_merged(name: str) -> bool:
    """Whether ``name`` is a base correction's name (:func:`merged_name`)."""
    return name.endswith(MERGED)


STACKED = "@stack"
"""The suffix of a stacked factor's name: ``<factor>@stack`` stacks several clients'
factors of that module along the rank (FLoRA), to be merged into the base weight."""


def stacked_name(factor: str) -> str:
    """The name of the stack of the factor ``factor``'s module (``A``'s or ``B``'s)."""
    return factor + STACKED


def is_stacked(name: str) -> bool:
    """Whether ``name`` is a stacked factor's name (:func:`stacked_name`)."""
    return name.endswith(STACKED)


def merges_base(name: str) -> bool:
    """Whether ``name`` is a tensor merged into base weights, not a trainable parameter.

    Base corrections (:func:`merged_name`) and stacked factors (:func:`stacked_name`).
    """
    return is_merged(name) or is_stacked(name)


def merged_plus(state: Mapping[str, torch.Tensor], up: str, delta: torch.Tensor) -> torch.Tensor:
    """The base correction ``state`` holds for the module of ``up``, plus ``delta``.

    ``delta`` alone where ``state`` holds none yet.
    """
    held = state.get(merged_name(up))
    return delta if held is None else held + delta


def corrections(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base corrections in ``state``."""
    return {n: t for n, t in state.items() if is_merged(n)}


class BaseWeights:
    """The adapted modules' base weights, set to the loaded weight plus a correction.

    A module's effective weight is ``W0 + s (C + B A)`` with ``s`` LoRA's scale: the
    correction ``C`` (FedEx-LoRA's residuals) is merged into the frozen base weight, as
    peft merges ``B A`` (transposed where the layer stores its weight so). The loaded ``W0``
    is kept on first use, so setting is exact and repeatable, and a module whose correction
    is absent goes back to ``W0``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.loaded: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def set_(self, merged: Mapping[str, torch.Tensor]) -> None:
        """Set every corrected module's base weight from ``merged`` (by :func:`merged_name`)."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Embedding

        for name in sorted({*self.loaded, *merged}):
            up = name.removesuffix(MERGED)
            module, adapter = adapted_module(up)
            layer = self.model.get_submodule(module)
            assert isinstance(layer, LoraLayer), f"{module} is no LoRA layer"
            weight = layer.get_base_layer().weight
            assert isinstance(weight, torch.Tensor)
            start = self.loaded.setdefault(name, weight.detach().clone())
            if name not in merged:
                weight.copy_(start)
                continue
            delta = layer.scaling[adapter] * merged[name].to(weight.device, torch.float32)
            if isinstance(layer, Embedding) or getattr(layer, "fan_in_fan_out", False):
                delta = delta.T
            weight.copy_((start.float() + delta).to(weight.dtype))


# Encoders peft has no default LoRA targets for (it knows bert, roberta, deberta, ...).
EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"]}


@dataclass(frozen=True)
class LowRankOptions(MethodOptions):
    """The rank and targets of the low-rank methods (LoRA, LoRA-SB)."""

    r: int = option(8, "LoRA rank (LoRA-SB: R is r x r)", at_least(1))
    target_modules: tuple[str, ...] | None = option(
        None, "the linear layers to adapt (null: peft's default for the model, query/value)"
    )


@dataclass(frozen=True)
class LoraOptions(LowRankOptions):
    """LoRA's rank, scale, dropout and targets."""

    lora_alpha: int = option(
        16, "LoRA scale numerator: B A is scaled by lora_alpha / r", at_least(1)
    )
    lora_dropout: float = option(
        0.0, "dropout on LoRA's input", within(0, 1, "a number in [0, 1)", high_open=True)
    )


class Lora(MethodBase):
    """LoRA with rank ``r`` and scale ``lora_alpha / r``; peft's default targets (query/value)."""

    name = "lora"
    default_lr = 2e-3
    options = LoraOptions

    def attach(self, encoder: PreTrainedModel, options: LoraOptions) -> nn.Module:
        """Inject LoRA into the target modules."""
        from peft import LoraConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        kind = encoder.config.model_type
        targets = list(options.target_modules or ()) or EXTRA_TARGETS.get(kind)
        if targets is None and kind not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise FedpetError(
                f"method.target_modules = None is not allowed with model type {kind!r}: peft "
                "knows no default LoRA targets for it; name the linear layers to adapt, e.g. "
                "--set method.target_modules=[query,value]"
            )
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            fan_in_fan_out=uses_conv1d(encoder),
            task_type=TaskType.FEATURE_EXTRACTION,
        )
        try:
            return attach_peft(encoder, config)
        except ValueError as exc:  # named targets the model does not have
            reason = str(exc).split(". ")[0]
            raise FedpetError(
                f"method.target_modules = {targets} is not allowed with model type {kind!r}: "
                f"{reason}"
            ) from None
