"""Full fine-tuning (FedFT): every encoder parameter trains and is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpet.methods.base import MethodBase

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


class Full(MethodBase):
    """Train all encoder weights."""

    name = "full"
    default_lr = 5e-5

    def attach(self, encoder: PreTrainedModel, options: object) -> nn.Module:
        """Unfreeze the whole encoder."""
        encoder.requires_grad_(True)
        return encoder
