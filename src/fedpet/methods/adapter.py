"""Bottleneck adapters through AdapterHub ``adapters``: Houlsby (2 per layer) or Pfeiffer (1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedpet.config import MethodOptions, option
from fedpet.config.fields import at_least, one_of
from fedpet.errors import FedpetError
from fedpet.methods.base import MethodBase

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

ADAPTER_NAME = "fedpet"


@dataclass(frozen=True)
class AdapterOptions(MethodOptions):
    """Which bottleneck adapter, and how narrow."""

    adapter: str = option(
        "pfeiffer",
        "pfeiffer (one adapter per layer) or houlsby (two)",
        one_of("houlsby", "pfeiffer"),
    )
    reduction_factor: int = option(16, "hidden size / bottleneck units", at_least(1))


class _NotInactive(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "none are activated" not in record.getMessage()


@contextmanager
def without_inactive_warning() -> Iterator[None]:
    """Drop the adapters library's "none are activated" warning within the block.

    ``train_adapter`` looks at the active adapters before it activates the one it trains,
    so that warning, about the very adapter being activated, is wrong there.
    """
    logger, quiet = logging.getLogger("adapters.model_mixin"), _NotInactive()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class Adapter(MethodBase):
    """Bottleneck adapters with hidden size / ``reduction_factor`` units."""

    name = "adapter"
    default_lr = 1e-3
    options = AdapterOptions

    def attach(self, encoder: PreTrainedModel, options: AdapterOptions) -> nn.Module:
        """Add and activate one adapter; ``train_adapter`` freezes the rest."""
        import adapters
        from adapters import DoubleSeqBnConfig, SeqBnConfig

        kind = DoubleSeqBnConfig if options.adapter == "houlsby" else SeqBnConfig
        try:
            adapters.init(encoder)
        except ValueError:  # a model type the adapters library has no interface for
            raise FedpetError(
                f"method.name = 'adapter' is not allowed with model type "
                f"{encoder.config.model_type!r}: the adapters library does not support it "
                "(it does BERT, RoBERTa, DistilBERT, GPT-2, GPT-J, Llama, Mistral, ...); "
                "use lora, ia3, prefix or prompt"
            ) from None
        model: Any = encoder  # adapters.init adds the adapter methods to the instance
        model.add_adapter(ADAPTER_NAME, config=kind(reduction_factor=options.reduction_factor))
        with without_inactive_warning():  # it warns before it activates the adapter
            model.train_adapter(ADAPTER_NAME)
        model.set_active_adapters(ADAPTER_NAME)
        return encoder
