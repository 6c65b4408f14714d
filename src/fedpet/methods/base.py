"""The PETuning method protocol: attach the method to an encoder and mark what trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fedpet.config import MethodOptions, option
from fedpet.config.fields import at_least

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedModel


class Method(Protocol):
    """A PETuning method.

    Attributes
    ----------
    name
        Registry key (``--method``).
    default_lr
        Learning rate of the method's parameters when the config leaves ``train.lr`` unset
        (the head has its own, ``train.head_lr``).
    options
        The method's options: :class:`~fedpet.config.MethodOptions` or a subclass with the
        method's own fields (``method.<field>`` in the config).
    from_data
        Whether :meth:`initialise` derives values from data (then every process that builds
        the model calls it).
    """

    @property
    def name(self) -> str:
        """Registry key."""
        ...

    @property
    def default_lr(self) -> float:
        """The method's default learning rate."""
        ...

    @property
    def options(self) -> type[MethodOptions]:
        """The method's options class."""
        ...

    @property
    def from_data(self) -> bool:
        """Whether the method's initialisation needs data."""
        ...

    def attach(self, encoder: PreTrainedModel, options: Any) -> nn.Module:
        """Add the method to ``encoder`` and return the module to run.

        ``options`` is an instance of :attr:`options`. On return exactly the method's
        parameters require grad (the encoder arrives frozen).
        """
        ...

    def extra_positions(self, options: Any) -> int:
        """Positions the method takes from the model's maximum length (soft tokens)."""
        ...

    def initialise(self, model: nn.Module, loss: Callable[[], torch.Tensor], options: Any) -> None:
        """Set what the method derives from data before training (LoRA-SB's factors).

        ``loss`` computes the task loss of a fixed sample with ``model``.
        """
        ...


class MethodBase:
    """Defaults for a method: no options of its own, no extra positions."""

    name: ClassVar[str]
    default_lr: ClassVar[float]
    options: ClassVar[type[MethodOptions]] = MethodOptions
    from_data: ClassVar[bool] = False

    def extra_positions(self, options: Any) -> int:
        """None."""
        return 0

    def initialise(self, model: nn.Module, loss: Callable[[], torch.Tensor], options: Any) -> None:
        """Nothing: the method's initialisation needs no data."""


def merge_modules(model: nn.Module) -> nn.Module:
    """``model`` with each submodule that merges into a plain layer replaced by that layer.

    A module merges by its ``merged()`` (LoRA-SB's layers): the result is what a library
    without fedpet loads.
    """
    for name, module in list(model.named_modules()):
        merged = getattr(module, "merged", None)
        if name and callable(merged):
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent).register_module(child, merged())
    return model


@dataclass(frozen=True)
class VirtualTokens(MethodOptions):
    """Options of the methods that learn virtual tokens (prefix and prompt tuning)."""

    num_virtual_tokens: int = option(10, "virtual tokens learned", at_least(1))


class VirtualTokenMethod(MethodBase):
    """A method that learns virtual tokens: they take positions before the input's.

    Prompt tuning prepends them to the input; prefix tuning passes them as past keys and
    values, after which BERT and GPT-2 number the input's positions.
    """

    options: ClassVar[type[MethodOptions]] = VirtualTokens

    def extra_positions(self, options: VirtualTokens) -> int:
        """One position per virtual token."""
        return options.num_virtual_tokens


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


def uses_conv1d(model: nn.Module) -> bool:
    """Whether the model's linear layers are transformers' ``Conv1D`` (GPT-2's).

    Conv1D stores its weights transposed, which peft's LoRA and IA3 must be told
    (``fan_in_fan_out``).
    """
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def attach_peft(encoder: PreTrainedModel, config: PeftConfig) -> nn.Module:
    """Wrap an encoder with a peft tuner; peft freezes everything but the tuner's tensors."""
    from peft import get_peft_model

    return get_peft_model(encoder, config)  # type: ignore[no-any-return]
