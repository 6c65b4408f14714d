"""Local training of several clients at once on the shared frozen model: batched passes.

A round's clients share the frozen base model; only their few trainable tensors differ.
:func:`train_cohort` trains a cohort of K of them together. In each local step, the clients'
batches are grouped by width into passes (:func:`width_groups`: one pass where a pass's
fixed cost outweighs padding, a pass per width where padding costs more). A pass stacks its
clients' batches row-wise into one batch (each padded to the pass's widest and most rows:
masked positions, and copies of a first row whose outputs are not used), which the frozen
model runs as one; each module that owns trainable tensors runs per client instead
(:mod:`fedpet.per_client`), with the client's own leaf tensors stacked along a new leading
axis. One backward pass per pass gives each client its gradients.

Everything else stays the client's own, as :class:`~fedpet.client.LocalTraining` does it
alone: data order, dropout stream (:mod:`fedpet.dropout`, keyed by the row's client),
optimizer and schedule (one torch optimizer per client), gradient clipping by its own norm,
loss scaling and the algorithm's hook. A client whose steps are done leaves the stack without
changing the others' arithmetic; a client whose hook raises one of the ``failures`` (an
injected crash) is dropped, and the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpet.algorithms.base import ClientHook
from fedpet.client import (
    TrainResult,
    epoch_batches,
    make_optimizer,
    optimizer_step,
    planned_steps,
)
from fedpet.config import Config, TrainConfig
from fedpet.data.batching import Encoded, collate
from fedpet.devices import autocast, grad_scaler
from fedpet.dropout import Stream, keyed, seed_tensor
from fedpet.generative.lm import IGNORE, CausalLM
from fedpet.per_client import PerClient, owners, per_client
from fedpet.state import TrainableState, extract

PADDING = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "targets": IGNORE}
"""What each batch field is padded with (None: the data's padding token)."""


def pass_cost(cfg: Config) -> float:
    """What one batched pass costs beyond its tokens, in tokens: ``federation.pass_cost``.

    ``auto`` is replaced by a measured cost when a run with ``parallel_clients`` above 1
    starts; until then (a probe, a direct call) every step is one pass.
    """
    cost = cfg.federation.pass_cost
    return float(cost) if cost.isdigit() else math.inf


def width_groups(widths: Sequence[int], rows: Sequence[int], cost: float) -> list[list[int]]:
    """The clients of one step grouped into passes, as indices into ``widths``.

    Client ``i``'s batch is ``rows[i]`` sequences of ``widths[i]`` tokens; a pass pads its
    clients' batches to its widest and most rows (:func:`stack_batches`). Of the groupings
    that are runs of the clients sorted by width, the one with the least
    ``passes * cost + padded tokens`` (of equal ones, that with the widest last pass); the
    passes go narrowest first.
    """
    order = sorted(range(len(widths)), key=lambda i: (widths[i], i))
    best = [0.0] + [math.inf] * len(order)  # best[j]: the cheapest grouping of order[:j]
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        most_rows = 0
        for i in range(j - 1, -1, -1):  # the last pass is order[i:j]
            most_rows = max(most_rows, rows[order[i]])
            total = best[i] + cost + (j - i) * most_rows * widths[order[j - 1]]
            if total <= best[j]:
                best[j], cut[j] = total, i
    groups: list[list[int]] = []
    j = len(order)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def parallel_clients(cfg: Config) -> int:
    """How many of a round's clients train together: ``federation.parallel_clients``.

    ``auto`` is replaced by the number chosen when the run starts (and so in its saved
    config) before any round.
    """
    k = cfg.federation.parallel_clients
    if not k.isdigit():
        raise ValueError(f"federation.parallel_clients = {k!r} was not chosen before the run")
    return int(k)


@dataclass(frozen=True)
class Job:
    """One client's local training: its examples, start, hook and seed.

    As :meth:`fedpet.experiment.Experiment.train_client` takes them; ``start`` holds every
    trainable tensor.
    """

    indices: np.ndarray
    start: TrainableState
    hook: ClientHook
    seed: int


class _Client:
    """One client's side of the cohort: its parameters, batches, optimizer and loss sums."""

    def __init__(
        self,
        job: Job,
        names: Sequence[str],
        fixed: frozenset[str],
        head_names: set[str],
        lengths: np.ndarray,
        train: TrainConfig,
        device: torch.device,
    ) -> None:
        self.job = job
        self.params = {
            n: nn.Parameter(job.start[n].to(device, copy=True), requires_grad=n not in fixed)
            for n in names
        }
        self.trained = {n: p for n, p in self.params.items() if n not in fixed}
        steps = planned_steps(len(job.indices), train, train.local_epochs)
        rng = np.random.default_rng(job.seed)
        plan: list[np.ndarray] = []
        while len(plan) < steps:  # epoch after epoch, as LocalTraining draws them
            plan += epoch_batches(job.indices, lengths, train, rng)[: steps - len(plan)]
        self.plan, self.steps = plan, steps
        self.optimizer, self.scheduler = make_optimizer(self.trained, head_names, train, steps)
        self.scaler = grad_scaler(device, train.precision)
        self.seed = seed_tensor(job.seed).to(device)
        self.total = 0.0
        self.seen = 0
        self.failure: Exception | None = None  # what the hook raised, which ended training

    def result(self) -> TrainResult:
        state = extract(self.params)
        mean = self.total / max(1, self.seen)
        return TrainResult(state, len(self.job.indices), mean, self.steps, self.seen)


def stack_batches(
    batches: Sequence[dict[str, torch.Tensor]], pad_id: int
) -> dict[str, torch.Tensor]:
    """The clients' batches stacked row-wise: each padded to the widest and the most rows.

    Padded positions are masked; the extra rows of a batch are copies of its first row whose
    outputs are not used (a generative copy scores no token).
    """
    rows = max(len(b["input_ids"]) for b in batches)
    width = max(b["input_ids"].shape[1] for b in batches)
    stacked = {}
    for field, value in PADDING.items():
        if field not in batches[0]:
            continue
        filled = []
        for batch in batches:
            t = batch[field]
            t = F.pad(t, (0, width - t.shape[1]), value=pad_id if value is None else value)
            extra = t[:1].expand(rows - len(t), -1)
            if field == "targets":
                extra = torch.full_like(extra, IGNORE)
            filled += [t, extra]
        stacked[field] = torch.cat(filled)
    return stacked


def train_cohort(
    model: nn.Module,
    names: Sequence[str],
    head_names: set[str],
    data: Encoded,
    jobs: Sequence[Job],
    train: TrainConfig,
    fixed: frozenset[str] = frozenset(),
    failures: tuple[type[Exception], ...] = (),
    cost: float = math.inf,
) -> list[TrainResult | Exception]:
    """Train ``jobs`` together on ``model`` (its trainable parameters ``names``).

    Each local step runs the clients' batches in the passes :func:`width_groups` chooses
    for a pass ``cost`` (in tokens; infinite: one pass), each pass's backward before the
    next, then every client's optimizer step.

    Returns, per job, what :class:`~fedpet.client.LocalTraining` would have: its trained
    state (every trainable tensor, ``fixed`` ones unchanged), examples, mean loss, steps and
    examples seen; or the exception in ``failures`` its hook raised.
    """
    device = next(model.parameters()).device
    lengths = data.lengths if train.group_by_length else np.empty(0, dtype=np.int64)
    clients = [_Client(j, names, fixed, head_names, lengths, train, device) for j in jobs]
    model.train()
    step = 0
    owned = owners(model, names)
    with per_client(model, owned) as wrapped:
        passes = _Passes(
            model, wrapped, owned, data.pad_id, Stream(seed_tensor(0)), train, failures
        )
        while active := [c for c in clients if c.failure is None and step < c.steps]:
            batches = [collate(data, c.plan[step], device) for c in active]
            widths = [b["input_ids"].shape[1] for b in batches]
            for group in width_groups(widths, [len(b["input_ids"]) for b in batches], cost):
                passes.run([active[i] for i in group], [batches[i] for i in group], step)
            for c in active:
                if c.failure is None:
                    optimizer_step(
                        c.trained, c.optimizer, c.scheduler, c.scaler, train.max_grad_norm
                    )
            step += 1
    return [c.result() if c.failure is None else c.failure for c in clients]


@dataclass(frozen=True)
class _Passes:
    """What every pass of a cohort shares: the model with its owners wrapped, and more."""

    model: nn.Module
    wrapped: dict[str, PerClient]
    owned: dict[str, list[str]]
    pad_id: int
    stream: Stream
    train: TrainConfig
    failures: tuple[type[Exception], ...]

    def run(
        self, clients: Sequence[_Client], batches: Sequence[dict[str, torch.Tensor]], step: int
    ) -> None:
        """One pass of ``clients`` on their ``batches`` stacked: forward, losses, backward.

        Each client's gradients land in its own parameters; a client whose hook raises one
        of ``failures`` is marked failed and left out of the backward pass.
        """
        batch = stack_batches(batches, self.pad_id)
        for path, wrapper in self.wrapped.items():
            wrapper.stacked = {
                n[len(path) + 1 :] if path else n: torch.stack([c.params[n] for c in clients])
                for n in self.owned[path]
            }
        self.stream.seeds = torch.cat([c.seed for c in clients])
        self.stream.start_step(step, len(batch["input_ids"]) // len(clients))
        with autocast(batch["input_ids"].device, self.train.precision), keyed(self.stream):
            out = _outputs(self.model, batch, len(clients))
            tasks = [
                _task_loss(o, b, c.job.hook) for o, b, c in zip(out, batches, clients, strict=True)
            ]
        losses = []
        for c, b, task in zip(clients, batches, tasks, strict=True):
            try:
                loss = c.job.hook.loss(task, c.trained)
            except self.failures as exc:
                c.failure = exc
                continue
            losses.append(loss if c.scaler is None else c.scaler.scale(loss))
            c.total += float(task.detach()) * len(b["input_ids"])
            c.seen += len(b["input_ids"])
        if losses:
            torch.stack(losses).sum().backward()


def _outputs(model: nn.Module, batch: dict[str, torch.Tensor], clients: int) -> list[torch.Tensor]:
    """Per client, its rows' class logits, or a causal LM's mean loss of its responses.

    As :meth:`~fedpet.generative.lm.CausalLM.token_losses`: the vocabulary logits only at
    the scored positions, each client's losses averaged over its own.
    """
    if "targets" not in batch:
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return list(logits.unflatten(0, (clients, -1)))
    assert isinstance(model, CausalLM)
    hidden = model.hidden(batch["input_ids"], batch["attention_mask"])[:, :-1]
    wanted = batch["targets"][:, 1:]
    scored = wanted != IGNORE
    rows = torch.arange(len(wanted), device=wanted.device)
    client = (rows // (len(wanted) // clients))[:, None].expand_as(wanted)[scored]
    if isinstance(model.lm_head, PerClient):  # a trained head applies to its client's rows
        logits = model.lm_head(hidden).float()[scored]
    else:
        logits = model.lm_head(hidden[scored]).float()
    losses = F.cross_entropy(logits, wanted[scored], reduction="none")
    return [losses[client == k].mean() for k in range(clients)]


def _task_loss(out: torch.Tensor, batch: dict[str, torch.Tensor], hook: ClientHook) -> torch.Tensor:
    """A client's task loss from its slice of the cohort's output, as ``batch_loss``."""
    if "targets" in batch:
        return out
    return F.cross_entropy(hook.logits(out[: len(batch["labels"])]), batch["labels"])
