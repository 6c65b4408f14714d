"""Local training of several clients at once on the shared frozen model: one batched pass.

A round's clients share the frozen base model; only their few trainable tensors differ.
:func:`train_cohort` trains a cohort of K of them together. The clients' batches are stacked
row-wise into one batch (each padded to the cohort's widest and most rows: masked positions,
and copies of a first row whose outputs are not used), which the frozen model runs as one.
Each module that owns trainable tensors (a LoRA factor, an adapter's projection, a biased
layer, the head, a prompt encoder) runs per client instead: its input is split into the
clients' rows, and ``torch.func.vmap`` applies it with each client's tensors
(``torch.func.functional_call``), which are the client's own leaf tensors stacked along a
new leading axis in every step. One backward pass gives each client its gradients.

Everything else stays the client's own, as :class:`~fedpet.client.LocalTraining` does it
alone: data order, dropout stream (:mod:`fedpet.dropout`, keyed by the row's client),
optimizer and schedule (one torch optimizer per client), gradient clipping by its own norm,
loss scaling and the algorithm's hook. A client whose steps are done leaves the stack without
changing the others' arithmetic; a client whose hook raises one of the ``failures`` (an
injected crash) is dropped, and the others go on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

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
from fedpet.state import TrainableState, extract

PADDING = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "targets": IGNORE}
"""What each batch field is padded with (None: the data's padding token)."""


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


class PerClient(nn.Module):
    """A module that owns trainable tensors, applied to each client's rows with its own."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.stacked: dict[str, torch.Tensor] = {}  # name in inner -> [clients, ...]

    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:
        """The inner module's attributes (its layer's ``weight.dtype``, as peft reads it)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)  # type: ignore[no-any-return]

    def forward(self, *args: object, **kwargs: object) -> object:
        """The inner module on each client's rows of every tensor input, with its tensors.

        A linear layer (LoRA's factors, an adapter's projections, a head, a biased layer) is
        one batched product over the clients; any other module runs under ``vmap``.
        """
        clients = len(next(iter(self.stacked.values())))
        if type(self.inner) is nn.Linear and len(args) == 1 and not kwargs:
            assert isinstance(args[0], torch.Tensor)
            return self.linear(args[0], clients)

        def split(x: object) -> object:
            return x.unflatten(0, (clients, -1)) if isinstance(x, torch.Tensor) else x

        def dims(x: object) -> int | None:
            return 0 if isinstance(x, torch.Tensor) else None

        def apply(
            params: dict[str, torch.Tensor], a: tuple[object, ...], kw: dict[str, object]
        ) -> object:
            return torch.func.functional_call(self.inner, params, a, kw)

        inputs = (tuple(map(split, args)), {k: split(v) for k, v in kwargs.items()})
        in_dims = (0, tuple(map(dims, args)), {k: dims(v) for k, v in kwargs.items()})
        out = torch.func.vmap(apply, in_dims=in_dims, randomness="error")(self.stacked, *inputs)
        return torch.utils._pytree.tree_map(
            lambda t: t.flatten(0, 1) if isinstance(t, torch.Tensor) else t, out
        )

    def linear(self, x: torch.Tensor, clients: int) -> torch.Tensor:
        """``inner`` as ``x W^T + b`` on each client's rows, W or b the client's where trained."""
        inner = self.inner
        assert isinstance(inner, nn.Linear)
        weight = self.stacked.get("weight", inner.weight)
        bias = self.stacked.get("bias", inner.bias)
        rows = x.unflatten(0, (clients, -1))
        flat = rows.flatten(1, -2)  # [clients, tokens, in]
        if weight.dim() == 3:
            out = torch.bmm(flat, weight.to(flat.dtype).transpose(1, 2))
        else:
            out = flat @ weight.to(flat.dtype).T
        if bias is not None:
            out = out + (bias[:, None] if bias.dim() == 2 else bias).to(out.dtype)
        return out.view(*rows.shape[:-1], -1).flatten(0, 1)


def owners(model: nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """The outermost modules that own the trainable tensors ``names``, with their tensors.

    A tensor's owner is the module it is an attribute of, or that module's parent where it
    is a container (peft's ``ParameterDict`` of IA3 scales); an owner inside another owner
    is left to it.
    """
    modules = dict(model.named_modules())
    found: dict[str, list[str]] = {}
    for name in names:
        path = name.rpartition(".")[0]
        while isinstance(modules[path], (nn.ParameterDict, nn.ParameterList)):
            path = path.rpartition(".")[0]
        found.setdefault(path, []).append(name)
    outer: dict[str, list[str]] = {}
    for path, held in sorted(found.items()):
        parent = next((o for o in outer if path.startswith(o + ".") or o == ""), None)
        if parent is None:
            outer[path] = list(held)
        else:
            outer[parent] += held
    return outer


@contextmanager
def per_client(model: nn.Module, found: dict[str, list[str]]) -> Iterator[dict[str, PerClient]]:
    """``model`` with each owner in ``found`` (:func:`owners`) wrapped in :class:`PerClient`."""
    wrapped: dict[str, PerClient] = {}
    prompted: list[Any] = [m for m in model.modules() if _repeats_one_prompt(m)]
    try:
        for peft_model in prompted:  # each row its client's prompt, not one repeated
            peft_model.get_prompt = partial(_prompt_per_row, peft_model)
        for path in found:
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            wrapped[path] = PerClient(getattr(parent, attr))
            setattr(parent, attr, wrapped[path])
        yield {path: wrapped[path] for path in found}
    finally:
        for peft_model in prompted:
            del peft_model.get_prompt
        for path, wrapper in wrapped.items():
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, wrapper.inner)


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


def _repeats_one_prompt(module: nn.Module) -> bool:
    """Whether ``module`` is a peft model that computes one soft prompt and repeats it."""
    from peft import PeftModel, PeftType

    if not isinstance(module, PeftModel):
        return False
    kind = module.peft_config[module.active_adapter].peft_type
    return kind in (PeftType.PROMPT_TUNING, PeftType.P_TUNING)


def _prompt_per_row(peft_model: Any, batch_size: int, **_: object) -> torch.Tensor:
    """Prompt tuning's soft prompts computed for every row, as peft does before it repeats one.

    The prompt encoder (a :class:`PerClient` in a cohort) then sees each client's rows.
    """
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    tokens = peft_model.prompt_tokens[peft_model.active_adapter]
    tokens = tokens.unsqueeze(0).expand(batch_size, -1).to(encoder.embedding.weight.device)
    return encoder(tokens)  # type: ignore[no-any-return]


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
) -> list[TrainResult | Exception]:
    """Train ``jobs`` together on ``model`` (its trainable parameters ``names``).

    Returns, per job, what :class:`~fedpet.client.LocalTraining` would have: its trained
    state (every trainable tensor, ``fixed`` ones unchanged), examples, mean loss, steps and
    examples seen; or the exception in ``failures`` its hook raised.
    """
    device = next(model.parameters()).device
    lengths = data.lengths if train.group_by_length else np.empty(0, dtype=np.int64)
    clients = [_Client(j, names, fixed, head_names, lengths, train, device) for j in jobs]
    stream = Stream(seed_tensor(0))
    model.train()
    step = 0
    owned = owners(model, names)
    with per_client(model, owned) as wrapped:
        while active := [c for c in clients if c.failure is None and step < c.steps]:
            batches = [collate(data, c.plan[step], device) for c in active]
            batch = stack_batches(batches, data.pad_id)
            rows = len(batch["input_ids"]) // len(active)
            for path, wrapper in wrapped.items():
                wrapper.stacked = {
                    n[len(path) + 1 :] if path else n: torch.stack([c.params[n] for c in active])
                    for n in owned[path]
                }
            stream.seeds = torch.cat([c.seed for c in active])
            stream.start_step(step, rows)
            with autocast(device, train.precision), keyed(stream):
                out = _outputs(model, batch, len(active))
                tasks = [
                    _task_loss(o, b, c.job.hook)
                    for o, b, c in zip(out, batches, active, strict=True)
                ]
            losses = []
            for c, b, task in zip(active, batches, tasks, strict=True):
                try:
                    loss = c.job.hook.loss(task, c.trained)
                except failures as exc:
                    c.failure = exc
                    continue
                losses.append(loss if c.scaler is None else c.scaler.scale(loss))
                c.total += float(task.detach()) * len(b["input_ids"])
                c.seen += len(b["input_ids"])
            if losses:
                torch.stack(losses).sum().backward()
            for c in active:
                if c.failure is None:
                    optimizer_step(
                        c.trained, c.optimizer, c.scheduler, c.scaler, train.max_grad_norm
                    )
            step += 1
    return [c.result() if c.failure is None else c.failure for c in clients]


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
