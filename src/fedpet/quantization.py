"""Quantized base weights (QLoRA, Dettmers et al., 2023) through bitsandbytes, on CUDA only.

The frozen base model is loaded in 4-bit NF4 (bf16 compute) or 8-bit; the method's tensors
stay fp32 and are what trains and travels, so the bytes on the wire do not change.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from fedpet.config import Config
from fedpet.devices import resolve_device
from fedpet.errors import require

QUANTIZABLE = ("lora", "ia3", "prefix", "prompt")
"""Methods that leave the base weights frozen, so those may be quantized."""


def check_quantization(cfg: Config) -> None:
    """Refuse quantization without CUDA or bitsandbytes, or for a method training base weights."""
    q = cfg.quantization
    if q == "none":
        return
    device = torch.device(resolve_device(cfg.device))
    require(
        device.type == "cuda",
        "quantization",
        q,
        f"none on device {device}: {q} base weights need bitsandbytes and a CUDA device",
    )
    require(
        importlib.util.find_spec("bitsandbytes") is not None,
        "quantization",
        q,
        f"none without bitsandbytes: pip install 'fedpet[qlora]' for {q} base weights",
    )
    require(
        cfg.method.name in QUANTIZABLE,
        "quantization",
        q,
        f"none with method {cfg.method.name} (it trains base weights); quantize with "
        + ", ".join(QUANTIZABLE),
    )


def quantization_config(kind: str) -> Any:
    """The transformers ``BitsAndBytesConfig`` for ``4bit`` (NF4, bf16 compute) or ``8bit``."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def prepare_quantized(model: Any) -> None:
    """Peft's preparation of a quantized model for training (norms in fp32, frozen base)."""
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
