"""LoRA-SB (Ponkshe et al., 2024), as Fed-SB federates it: ``W + B R A``, only ``R`` trains.

Each adapted linear layer gets frozen factors ``B`` (out x r) and ``A`` (r x in) and a
trained ``r x r`` matrix ``R`` between them. ``B`` and ``A`` are set once, before training,
from the truncated SVD of the gradient of the task loss with respect to the layer's
pretrained weight (the direction full fine-tuning's first step would take):
``G = U S V^T``, ``B = U_r``, ``A = V_r^T``. The gradient is taken on a fixed sample of the
validation split (the server's data, the same in every process), in eval mode, on the CPU.
``R`` starts at zero, so the model starts as the pretrained one (the paper also sets ``R``
from the gradient's step; fedpet leaves the start unchanged). Every client shares ``B`` and
``A``, so plain FedAvg on ``R`` averages the updates ``B R_k A`` exactly, and a client sends
``r^2`` values per adapted layer plus the head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from fedpet.errors import FedpetError
from fedpet.methods.base import MethodBase
from fedpet.methods.lora import EXTRA_TARGETS, LowRankOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MIDDLE = "lora_sb_R"
"""The name of the trained ``r x r`` matrix of an adapted layer."""


class SbLinear(nn.Module):
    """A frozen linear layer plus ``B R A``: ``B`` and ``A`` fixed buffers, ``R`` trained."""

    lora_sb_B: torch.Tensor
    lora_sb_A: torch.Tensor

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        out_features, in_features = base.weight.shape
        self.register_buffer("lora_sb_B", base.weight.new_zeros(out_features, rank))
        self.register_buffer("lora_sb_A", base.weight.new_zeros(rank, in_features))
        self.lora_sb_R = nn.Parameter(base.weight.new_zeros(rank, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus ``x A^T R^T B^T``."""
        update = F.linear(F.linear(F.linear(x, self.lora_sb_A), self.lora_sb_R), self.lora_sb_B)
        out: torch.Tensor = self.base(x) + update
        return out

    def update(self) -> torch.Tensor:
        """The layer's weight update ``B R A``."""
        return self.lora_sb_B @ self.lora_sb_R @ self.lora_sb_A

    def merged(self) -> nn.Linear:
        """The base layer with ``B R A`` added to its weight: a plain linear layer."""
        with torch.no_grad():
            self.base.weight.add_(self.update().to(self.base.weight.dtype))
        return self.base


def middle_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per trained ``R`` (its parameter name), the frozen ``(B, A)`` around it."""
    return {
        f"{name}.{MIDDLE}": (m.lora_sb_B.detach().cpu(), m.lora_sb_A.detach().cpu())
        for name, m in model.named_modules()
        if isinstance(m, SbLinear)
    }


class LoraSb(MethodBase):
    """LoRA-SB: ``R`` of rank ``r`` between factors set from the first-step gradient."""

    name = "lora-sb"
    default_lr = 2e-3
    options = LowRankOptions
    from_data = True

    def attach(self, encoder: PreTrainedModel, options: LowRankOptions) -> nn.Module:
        """Wrap the target linear layers; ``B`` and ``A`` wait for :meth:`initialise`."""
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        kind = encoder.config.model_type
        targets = list(options.target_modules or EXTRA_TARGETS.get(kind) or DEFAULTS.get(kind, ()))
        found = [
            (name, m)
            for name, m in encoder.named_modules()
            if any(name == t or name.endswith(f".{t}") for t in targets)
        ]
        if not targets or not found or not all(type(m) is nn.Linear for _, m in found):
            raise FedpetError(
                f"method.target_modules = {targets or None} is not allowed with model type "
                f"{kind!r}: LoRA-SB adapts torch.nn.Linear layers; name some, e.g. "
                "--set method.target_modules=[query,value]"
            )
        for name, module in found:
            parent, _, child = name.rpartition(".")
            assert isinstance(module, nn.Linear)
            encoder.get_submodule(parent).register_module(child, SbLinear(module, options.r))
        return encoder

    def initialise(
        self, model: nn.Module, loss: Callable[[], torch.Tensor], options: LowRankOptions
    ) -> None:
        """Set each layer's ``B`` and ``A`` from the SVD of its weight's gradient of ``loss``."""
        layers = [m for m in model.modules() if isinstance(m, SbLinear)]
        for layer in layers:
            layer.base.weight.requires_grad_(True)
        try:
            loss().backward()
            with torch.no_grad():
                for layer in layers:
                    grad = layer.base.weight.grad
                    assert grad is not None, "the loss reaches every adapted layer"
                    u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
                    layer.lora_sb_B.copy_(u[:, : options.r])
                    layer.lora_sb_A.copy_(vh[: options.r])
        finally:
            for layer in layers:
                layer.base.weight.grad = None
                layer.base.weight.requires_grad_(False)
            model.zero_grad(set_to_none=True)
