"""Bottleneck adapters through AdapterHub ``adapters``: Houlsby (two per layer) or Pfeiffer (one)."""

from __future__ import annotations

import adapters
from adapters import DoubleSeqBnConfig, SeqBnConfig
from torch import nn
from transformers import PreTrainedModel

from fedpet.config import MethodConfig

ADAPTER_NAME = "fedpet"


class Adapter:
    """Bottleneck adapters with hidden size / ``reduction_factor`` units."""

    name = "adapter"
    default_lr = 1e-3
    default_head_lr = 1e-2

    def attach(self, encoder: PreTrainedModel, options: MethodConfig) -> nn.Module:
        """Add and activate one adapter; ``train_adapter`` freezes the rest."""
        kind = DoubleSeqBnConfig if options.adapter == "houlsby" else SeqBnConfig
        adapters.init(encoder)
        encoder.add_adapter(ADAPTER_NAME, config=kind(reduction_factor=options.reduction_factor))
        encoder.train_adapter(ADAPTER_NAME)
        encoder.set_active_adapters(ADAPTER_NAME)
        return encoder
