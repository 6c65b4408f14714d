"""Prefix tuning (Li & Liang, 2021) through peft: trained key/value prefixes in every layer."""

from __future__ import annotations

from peft import PrefixTuningConfig, TaskType
from torch import nn
from transformers import PreTrainedModel

from fedpet.config import MethodConfig
from fedpet.methods.base import attach_peft


class Prefix:
    """``num_virtual_tokens`` key/value prefixes per layer."""

    name = "prefix"
    default_lr = 1e-2

    def attach(self, encoder: PreTrainedModel, options: MethodConfig) -> nn.Module:
        """Add the prefix encoder."""
        config = PrefixTuningConfig(
            num_virtual_tokens=options.num_virtual_tokens, task_type=TaskType.FEATURE_EXTRACTION
        )
        return attach_peft(encoder, config)
