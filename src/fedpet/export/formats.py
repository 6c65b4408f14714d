"""The libraries' own formats for an encoder with its method: save it, load it back.

The format follows the encoder object, not the method's name, so a plugin method built on
peft or the adapters library exports as they do:

- ``peft``: a peft model (lora, prefix, prompt, ia3): ``adapter_config.json`` and
  ``adapter_model.safetensors``, loaded by ``PeftModel.from_pretrained(base, DIR)``;
- ``adapters``: an adapters-library model (adapter): ``adapter_config.json`` and
  ``adapter.safetensors``, loaded by ``model.load_adapter(DIR, use_safetensors=True)``
  after ``adapters.init``;
- ``transformers``: every other encoder (full, bitfit): ``config.json`` and
  ``model.safetensors``, loaded by ``AutoModel.from_pretrained(DIR)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from fedpet.methods.adapter import ADAPTER_NAME

FORMATS = ("peft", "adapters", "transformers")


def format_of(encoder: nn.Module) -> str:
    """Which library format ``encoder`` (with its method attached) is saved in."""
    from peft import PeftModel

    if isinstance(encoder, PeftModel):
        return "peft"
    if hasattr(encoder, "adapters_config"):  # set by adapters.init
        return "adapters"
    return "transformers"


def save_encoder(encoder: nn.Module, out: Path) -> str:
    """Save ``encoder`` into ``out`` in its library's format; the format's name."""
    kind = format_of(encoder)
    model: Any = encoder
    if kind == "peft":
        model.save_pretrained(str(out))
    elif kind == "adapters":
        model.save_adapter(str(out), ADAPTER_NAME, use_safetensors=True)
    else:
        model.save_pretrained(str(out), safe_serialization=True)
    return kind


def load_encoder(kind: str, out: Path, base: str) -> nn.Module:
    """The encoder saved in ``out`` as ``kind``, over the pretrained model at ``base``."""
    with quiet_transformers():
        if kind == "transformers":
            loaded: nn.Module = AutoModel.from_pretrained(str(out))
            return loaded
        model: Any = AutoModel.from_pretrained(base)
    if kind == "peft":
        from peft import PeftModel
        from peft.utils import SAFETENSORS_WEIGHTS_NAME

        if not (out / SAFETENSORS_WEIGHTS_NAME).is_file():  # peft would look for a pickle
            raise FileNotFoundError(f"no {SAFETENSORS_WEIGHTS_NAME}")
        peft_model: nn.Module = PeftModel.from_pretrained(model, str(out))
        return peft_model
    import adapters
    from adapters.utils import SAFE_WEIGHTS_NAME

    if not (out / SAFE_WEIGHTS_NAME).is_file():  # adapters would fall back to a pickle file
        raise FileNotFoundError(f"no {SAFE_WEIGHTS_NAME}")
    adapters.init(model)
    name = model.load_adapter(str(out), load_as=ADAPTER_NAME, use_safetensors=True)
    model.set_active_adapters(name)
    adapted: nn.Module = model
    return adapted


class quiet_transformers:
    """Silence transformers' warnings while loading (the unused pooler it initializes)."""

    def __enter__(self) -> None:
        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc: object) -> None:
        hf_logging.set_verbosity(self.level)
