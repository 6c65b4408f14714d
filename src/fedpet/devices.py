"""Where a process computes and at what precision: devices, autocast and gradient scaling.

The model, its batches, evaluation and the optimizer live on the run's ``device``; what is
sent, checkpointed and aggregated is CPU fp32 (see :func:`fedpet.state.extract`), so a
run's bytes and checkpoints mean the same on any machine.
"""

from __future__ import annotations

import functools
import re

import torch

from fedpet.config import Config
from fedpet.errors import FedpetError, require
from fedpet.state import TrainableState

DEVICES = "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> str:
    """The device ``name`` means on this machine: ``auto`` becomes ``cuda`` or ``cpu``.

    Raises :class:`~fedpet.errors.FedpetError` in one line for a device that is not there.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(match.group(1) or 0)
        require(
            index < count,
            "device",
            name,
            f"this machine has {count} CUDA device(s); use {DEVICES} that is present"
            if count
            else f"this machine has no CUDA device (torch {torch.__version__}); use cpu or auto",
        )
        return name
    if name == "mps":
        require(torch.backends.mps.is_available(), "device", name, "this machine has no MPS")
        return name
    raise FedpetError(f"device = {name!r} is not allowed: use {DEVICES}")


@functools.cache
def bf16_works(device_type: str) -> bool:
    """Whether bf16 autocast runs on this machine's ``device_type`` (natively on CUDA)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            x = torch.ones(2, 2, device=device_type)
            return bool((x @ x).dtype == torch.bfloat16)
    except RuntimeError:
        return False


def check_device(cfg: Config) -> None:
    """The device must be present and run the precision: fp16 on CUDA, bf16 where it works."""
    device = torch.device(resolve_device(cfg.device))
    p = cfg.train.precision
    where = f"device = {cfg.device}" + (f" ({device})" if cfg.device == "auto" else "")
    require(
        p != "fp16" or device.type == "cuda",
        "train.precision",
        p,
        f"fp32 or bf16 on {where}: fp16 autocast with gradient scaling needs a CUDA device",
    )
    require(
        p != "bf16" or bf16_works(device.type),
        "train.precision",
        p,
        f"fp32 on {where}: it does not run bf16" + (" natively" if device.type == "cuda" else ""),
    )


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's precision on ``device``: bf16 or fp16 autocast, or (fp32) none.

    Parameters, gradients and optimizer state stay fp32 either way (master weights).
    """
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs (its gradients underflow unscaled); else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def to_device(state: TrainableState, device: torch.device) -> TrainableState:
    """``state`` with every tensor on ``device`` (the same tensors where already there)."""
    return {name: t.to(device) for name, t in state.items()}


def reset_device_peak(device: str) -> None:
    """Start the count of :func:`device_peak_mb` on a CUDA ``device`` now (elsewhere: none)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_mb(device: torch.device) -> float | None:
    """Peak memory torch allocated on a CUDA ``device``, in MB; None on other devices."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
