"""(IA)^3 (Liu et al., 2022) through peft: learned rescaling of keys, values and FFN activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpet.methods.base import MethodBase, attach_peft, uses_conv1d

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

# Encoders peft has no default IA3 targets for: (targets, feed-forward targets).
EXTRA_TARGETS = {"distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"])}


class IA3(MethodBase):
    """IA3 vectors on peft's default modules for the model type."""

    name = "ia3"
    default_lr = 1e-2

    def attach(self, encoder: PreTrainedModel, options: object) -> nn.Module:
        """Inject the IA3 scaling vectors."""
        from peft import IA3Config, TaskType

        targets, feedforward = EXTRA_TARGETS.get(encoder.config.model_type, (None, None))
        config = IA3Config(
            target_modules=targets,
            feedforward_modules=feedforward,
            fan_in_fan_out=uses_conv1d(encoder),
            task_type=TaskType.FEATURE_EXTRACTION,
        )
        return attach_peft(encoder, config)
