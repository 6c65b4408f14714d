"""BitFit (Ben Zaken et al., 2022): only the bias terms of the encoder train."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpet.methods.base import MethodBase

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


class BitFit(MethodBase):
    """Train every ``bias`` of the encoder."""

    name = "bitfit"
    default_lr = 5e-3

    def attach(self, encoder: PreTrainedModel, options: object) -> nn.Module:
        """Unfreeze the bias parameters."""
        for name, param in encoder.named_parameters():
            param.requires_grad_(name.endswith("bias"))
        return encoder
