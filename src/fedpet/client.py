"""Local training and evaluation on the shared model: the same functions serve every runtime."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from fedpet.algorithms.base import ClientHook
from fedpet.config import TrainConfig
from fedpet.data.batching import (
    Encoded,
    collate,
    length_grouped_batches,
    length_sorted_batches,
    shuffled_batches,
)
from fedpet.devices import autocast, grad_scaler
from fedpet.dropout import Stream, keyed, seed_tensor
from fedpet.generative.lm import CausalLM
from fedpet.generative.scoring import evaluate_generative
from fedpet.metrics import classification_metrics
from fedpet.state import TrainableState, extract


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training produced.

    ``num_examples`` is the client's partition size (its FedAvg weight), ``seen`` the
    examples its steps trained on, every epoch's (fewer under ``train.max_steps``), and
    ``loss`` their mean task loss.
    """

    state: TrainableState
    num_examples: int
    loss: float
    steps: int
    seen: int


def planned_steps(examples: int, train: TrainConfig, epochs: int) -> int:
    """Optimizer steps of local training on ``examples`` examples.

    ``epochs`` passes of ``train.batch_size`` batches, at most ``train.max_steps`` (FlowerTune's
    "max-steps" per round). Local training and the simulated faults (a planned crash's step,
    a straggler's seconds) both count with this.
    """
    steps = epochs * math.ceil(examples / train.batch_size)
    return steps if train.max_steps is None else min(steps, train.max_steps)


def make_optimizer(
    params: dict[str, nn.Parameter], head_names: set[str], train: TrainConfig, total_steps: int
) -> tuple[Optimizer, LRScheduler | None]:
    """A fresh optimizer over the trainable parameters, the head at ``train.head_lr``.

    Its multi-tensor (``foreach``) implementation on every device: a step is a few
    operators for all the tensors, not a few per tensor (what CUDA picks by default).
    """
    assert train.lr is not None, "resolve the config first"
    body = [p for n, p in params.items() if n not in head_names]
    head = [p for n, p in params.items() if n in head_names]
    groups = [
        g
        for g in ({"params": body, "lr": train.lr}, {"params": head, "lr": train.head_lr})
        if g["params"]
    ]
    optimizer: Optimizer
    if train.optimizer == "sgd":
        optimizer = SGD(groups, lr=train.lr, weight_decay=train.weight_decay, foreach=True)
    else:
        optimizer = AdamW(groups, lr=train.lr, weight_decay=train.weight_decay, foreach=True)
    scheduler = None
    if train.schedule == "linear":
        scheduler = LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, total_steps)))
    return optimizer, scheduler


def reporting(
    batches: list[np.ndarray], report: Callable[[int, int], None]
) -> Iterator[np.ndarray]:
    """The batches, calling ``report(done, total)`` after each one's step."""
    for done, idx in enumerate(batches, 1):
        yield idx
        report(done, len(batches))


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], hook: ClientHook) -> torch.Tensor:
    """The task loss of a batch.

    The cross-entropy of the (hook-adjusted) class logits, or for a generative batch (it has
    ``targets``) the mean cross-entropy of its response tokens.
    """
    if "targets" in batch:
        assert isinstance(model, CausalLM)
        return model.response_loss(batch["input_ids"], batch["attention_mask"], batch["targets"])
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    return F.cross_entropy(hook.logits(logits), batch["labels"])


def train_epoch(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Encoded,
    batches: Iterable[np.ndarray],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    hook: ClientHook,
    max_grad_norm: float | None,
    stream: Stream,
    first_step: int = 0,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over ``batches``; returns the summed (example-weighted) task loss.

    ``hook`` adjusts the logits before the task loss (:func:`batch_loss`) and the loss before
    the gradient. Dropout draws from the client's ``stream`` (:mod:`fedpet.dropout`), keyed
    by local step ``first_step`` onwards. The batches go to the parameters' device and the
    forward pass runs at ``precision`` (see :func:`fedpet.devices.autocast`); ``scaler``
    scales fp16 losses (a step whose scaled gradients overflowed is skipped, as
    :class:`torch.amp.GradScaler` does).
    """
    model.train()
    device = next(iter(params.values())).device
    total = 0.0
    for step, idx in enumerate(batches, first_step):
        batch = collate(data, idx, device)
        stream.start_step(step)
        with autocast(device, precision), keyed(stream):
            task_loss = batch_loss(model, batch, hook)
        loss = hook.loss(task_loss, params)
        (loss if scaler is None else scaler.scale(loss)).backward()
        optimizer_step(params, optimizer, scheduler, scaler, max_grad_norm)
        total += float(task_loss.detach()) * len(idx)
    return total


def optimizer_step(
    params: dict[str, nn.Parameter],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    max_grad_norm: float | None,
) -> None:
    """One step on the gradients of ``params``: unscaled, clipped by their norm, applied.

    ``scaler`` skips a step whose scaled gradients overflowed, as
    :class:`torch.amp.GradScaler` does; the gradients are then cleared and the schedule moves.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(params.values(), max_grad_norm, foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def epoch_batches(
    indices: np.ndarray, lengths: np.ndarray, train: TrainConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches of ``indices``, drawn from ``rng``: shuffled, or grouped by length.

    ``lengths`` holds every example's token count (used with ``train.group_by_length``).
    """
    if train.group_by_length:
        return length_grouped_batches(indices, lengths, train.batch_size, rng)
    return shuffled_batches(indices, train.batch_size, rng)


class LocalTraining:
    """One optimizer's pass, epoch by epoch, over a client's examples of the shared model.

    Data order and the dropout stream (:mod:`fedpet.dropout`) derive from ``seed``; the
    optimizer is built fresh and kept for all epochs. :meth:`snapshot` and :meth:`restore`
    carry the optimizer, schedule and random states across a process restart, so that
    centralized training resumes exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        head_names: set[str],
        data: Encoded,
        indices: np.ndarray,
        train: TrainConfig,
        hook: ClientHook,
        seed: int,
        epochs: int,
    ) -> None:
        self.model, self.params, self.data, self.indices = model, params, data, indices
        self.lengths = data.lengths if train.group_by_length else np.empty(0, dtype=np.int64)
        self.train, self.hook = train, hook
        self.device = next(iter(params.values())).device
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.stream = Stream(seed_tensor(seed).to(self.device))
        self.epochs = epochs
        self.steps = planned_steps(len(indices), train, epochs)
        self.done = self.seen = 0  # steps taken, examples trained on by run()
        self.optimizer, self.scheduler = make_optimizer(params, head_names, train, self.steps)
        self.optimizer.zero_grad(set_to_none=True)  # a crashed client may have left gradients
        self.scaler = grad_scaler(self.device, train.precision)
        self.epoch = 0
        self.report: Callable[[int, int], None] | None = None  # (steps done, of the epoch)

    def run_epoch(self) -> float:
        """Train one more epoch; returns its summed (example-weighted) task loss."""
        batches = epoch_batches(self.indices, self.lengths, self.train, self.rng)
        batches = batches[: self.steps - self.done]
        first = self.done
        self.done += len(batches)
        seen = sum(len(b) for b in batches)
        loss = train_epoch(
            self.model,
            self.params,
            self.data,
            batches if self.report is None else reporting(batches, self.report),
            self.optimizer,
            self.scheduler,
            self.hook,
            self.train.max_grad_norm,
            self.stream,
            first,
            self.train.precision,
            self.scaler,
        )
        self.epoch += 1
        self.seen += seen
        return loss

    def run(self) -> TrainResult:
        """Train the remaining epochs; the trained state, examples and mean task loss."""
        self.seen = 0
        loss = sum(self.run_epoch() for _ in range(self.epoch, self.epochs))
        mean = loss / max(1, self.seen)
        return TrainResult(extract(self.params), len(self.indices), mean, self.steps, self.seen)

    def snapshot(self) -> tuple[TrainableState, dict[str, Any]]:
        """Tensors (optimizer state, torch RNGs) and JSON data (the rest) to restore from.

        Tensors are on the CPU, so a snapshot can be saved anywhere; the CUDA generator's
        state is saved too when training is on CUDA (its dropout draws from it).
        """
        state = self.optimizer.state_dict()
        tensors: TrainableState = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        scalars: dict[str, Any] = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{key}"] = value.cpu()
                else:
                    scalars[f"{index}.{key}"] = value
        meta = {
            "epoch": self.epoch,
            "steps_done": self.done,
            "param_groups": state["param_groups"],
            "optimizer_scalars": scalars,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng_numpy": self.rng.bit_generator.state,
        }
        return tensors, meta

    def restore(self, tensors: TrainableState, meta: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` (of the same parameters and config)."""
        per_param: dict[int, dict[str, Any]] = {}
        entries = [(k, v) for k, v in tensors.items() if not k.startswith("rng.")]
        for name, value in [*entries, *meta["optimizer_scalars"].items()]:
            index, key = name.split(".", 1)
            per_param.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        if self.scheduler is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        self.rng.bit_generator.state = meta["rng_numpy"]
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if self.scaler is not None:
            self.scaler.load_state_dict(meta["scaler"])
        self.epoch = int(meta["epoch"])
        self.done = int(meta.get("steps_done", 0))


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: Encoded, batch_size: int, num_labels: int, precision: str = "fp32"
) -> dict[str, float]:
    """Metrics of the model on ``data``, in batches of similar length.

    The forward pass runs on the model's device at ``precision``, as in training. See
    :func:`fedpet.metrics.classification_metrics` for which metrics, and
    :func:`fedpet.generative.scoring.evaluate_generative` for a causal LM's.
    """
    if isinstance(model, CausalLM):
        return evaluate_generative(model, data, batch_size, precision)
    model.eval()
    device = next(model.parameters()).device
    preds = np.empty(len(data), dtype=np.int64)
    for idx in length_sorted_batches(data, batch_size):
        batch = collate(data, idx, device)
        with autocast(device, precision):
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        preds[idx] = logits.argmax(-1).cpu().numpy()
    return classification_metrics(preds, data.labels, num_labels)
