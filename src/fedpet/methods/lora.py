"""LoRA (Hu et al., 2022) through peft: low-rank updates B A of the targeted linear layers."""

from __future__ import annotations

from peft import LoraConfig, TaskType
from torch import nn
from transformers import PreTrainedModel

from fedpet.config import MethodConfig
from fedpet.methods.base import attach_peft

# Encoders peft has no default LoRA targets for (it knows bert, roberta, deberta, ...).
EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"]}


class Lora:
    """LoRA with rank ``r`` and scale ``lora_alpha / r``; peft's default targets (query/value)."""

    name = "lora"
    default_lr = 2e-3

    def attach(self, encoder: PreTrainedModel, options: MethodConfig) -> nn.Module:
        """Inject LoRA into the target modules."""
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=(
                list(options.target_modules)
                if options.target_modules
                else EXTRA_TARGETS.get(encoder.config.model_type)
            ),
            task_type=TaskType.FEATURE_EXTRACTION,
        )
        return attach_peft(encoder, config)
