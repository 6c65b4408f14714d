"""Local training and evaluation on the shared model: the same functions serve every runtime."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from fedpet.algorithms.base import ClientHook
from fedpet.config import TrainConfig
from fedpet.data.batching import Encoded, collate, length_sorted_batches, shuffled_batches
from fedpet.metrics import classification_metrics
from fedpet.state import TrainableState, extract


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training produced."""

    state: TrainableState
    num_examples: int
    loss: float
    steps: int


def make_optimizer(
    params: dict[str, nn.Parameter], head_names: set[str], train: TrainConfig, total_steps: int
) -> tuple[Optimizer, LRScheduler | None]:
    """A fresh optimizer over the trainable parameters, the head at ``train.head_lr``."""
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
        optimizer = SGD(groups, lr=train.lr, weight_decay=train.weight_decay)
    else:
        optimizer = AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = None
    if train.schedule == "linear":
        scheduler = LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, total_steps)))
    return optimizer, scheduler


def train_epoch(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Encoded,
    batches: list[np.ndarray],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    hook: ClientHook,
    max_grad_norm: float | None,
) -> float:
    """One pass over ``batches``; returns the summed (example-weighted) task loss."""
    model.train()
    total = 0.0
    for idx in batches:
        batch = collate(data, idx)
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        task_loss = F.cross_entropy(logits, batch["labels"])
        hook.loss(task_loss, params).backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params.values(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        total += float(task_loss.detach()) * len(idx)
    return total


def local_train(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    head_names: set[str],
    data: Encoded,
    indices: np.ndarray,
    train: TrainConfig,
    hook: ClientHook,
    seed: int,
    epochs: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the shared model from its current state on ``indices`` for ``epochs`` epochs.

    Data order and dropout derive from ``seed``. The optimizer is built fresh and kept for all
    epochs; ``on_epoch(epoch, summed_loss)`` is called after each (centralized training
    evaluates there).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = epochs * math.ceil(len(indices) / train.batch_size)
    optimizer, scheduler = make_optimizer(params, head_names, train, steps)
    loss = 0.0
    for epoch in range(1, epochs + 1):
        batches = shuffled_batches(indices, train.batch_size, rng)
        epoch_loss = train_epoch(
            model, params, data, batches, optimizer, scheduler, hook, train.max_grad_norm
        )
        loss += epoch_loss
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
    return TrainResult(extract(params), len(indices), loss / (epochs * len(indices)), steps)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Encoded, batch_size: int, num_labels: int) -> dict[str, float]:
    """Classification metrics of the model on ``data``, in batches of similar length.

    See :func:`fedpet.metrics.classification_metrics` for which.
    """
    model.eval()
    preds = np.empty(len(data), dtype=np.int64)
    for idx in length_sorted_batches(data, batch_size):
        batch = collate(data, idx)
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        preds[idx] = logits.argmax(-1).numpy()
    return classification_metrics(preds, data.labels, num_labels)
