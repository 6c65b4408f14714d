"""Prompt tuning (Lester et al., 2021) through peft: trained soft tokens before the input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpet.methods.base import VirtualTokenMethod, VirtualTokens, attach_peft, prompt_dims

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


class Prompt(VirtualTokenMethod):
    """``num_virtual_tokens`` soft prompt embeddings prepended to every input."""

    name = "prompt"
    default_lr = 3e-2

    def attach(self, encoder: PreTrainedModel, options: VirtualTokens) -> nn.Module:
        """Add the soft prompt."""
        from peft import PromptTuningConfig, TaskType

        config = PromptTuningConfig(
            num_virtual_tokens=options.num_virtual_tokens,
            task_type=TaskType.FEATURE_EXTRACTION,
            **prompt_dims(encoder),
        )
        return attach_peft(encoder, config)
