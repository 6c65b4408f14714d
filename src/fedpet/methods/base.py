"""The PETuning method protocol: attach the method to an encoder and mark what trains."""

from __future__ import annotations

from typing import Any, Protocol

from peft import PeftConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from fedpet.config import MethodConfig


class Method(Protocol):
    """A PETuning method.

    Attributes
    ----------
    name
        Registry key (``--method``).
    default_lr
        Learning rate of the method's parameters when the config leaves ``train.lr`` unset
        (the head has its own, ``train.head_lr``).
    """

    name: str
    default_lr: float

    def attach(self, encoder: PreTrainedModel, options: MethodConfig) -> nn.Module:
        """Add the method to ``encoder`` and return the module to run.

        On return exactly the method's parameters require grad (the encoder arrives frozen).
        """
        ...


def prompt_dims(encoder: PreTrainedModel) -> dict[str, Any]:
    """Sizes peft's prompt-learning configs need, read through the config's attribute map.

    peft reads them from ``config.to_dict()``, which misses DistilBERT's ``dim``/``n_layers``.
    """
    config = encoder.config
    return {
        "token_dim": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
    }


def attach_peft(encoder: PreTrainedModel, config: PeftConfig) -> nn.Module:
    """Wrap an encoder with a peft tuner; peft freezes everything but the tuner's tensors."""
    return get_peft_model(encoder, config)  # type: ignore[no-any-return]
