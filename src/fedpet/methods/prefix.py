"""Prefix tuning (Li & Liang, 2021) through peft: trained key/value prefixes in every layer."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from fedpet.errors import FedpetError
from fedpet.methods.base import VirtualTokenMethod, VirtualTokens, attach_peft, prompt_dims

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


class Prefix(VirtualTokenMethod):
    """``num_virtual_tokens`` key/value prefixes per layer."""

    name = "prefix"
    default_lr = 1e-2

    def attach(self, encoder: PreTrainedModel, options: VirtualTokens) -> nn.Module:
        """Add the prefix encoder."""
        from peft import PrefixTuningConfig, TaskType

        if "past_key_values" not in inspect.signature(encoder.forward).parameters:
            raise FedpetError(
                f"method.name = 'prefix' is not allowed with model type "
                f"{encoder.config.model_type!r}: its encoder takes no past key values; "
                "use an encoder such as BERT or RoBERTa, or another method"
            )
        config = PrefixTuningConfig(
            num_virtual_tokens=options.num_virtual_tokens,
            task_type=TaskType.FEATURE_EXTRACTION,
            **prompt_dims(encoder),
        )
        return attach_peft(encoder, config)
