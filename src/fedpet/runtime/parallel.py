"""How many of a round's clients train together: memory planned before the run, and ``auto``.

Training K clients together (:mod:`fedpet.cohort`) keeps K clients' activations and K
copies of the trainable tensors with their gradients and optimizer state. :func:`plan`
estimates that from one measured forward pass: the bytes autograd saves for the backward
pass (the activations, whatever the model and method) of one client's batch at the
configured batch size and the longest sequence, times K, plus K times the trainable
tensors' own bytes. ``federation.parallel_clients: auto`` picks, on a GPU, the largest K
(up to the clients per round) whose estimate fits the device's free memory, and on the CPU
the K a short probe of real cohort steps measures fastest; the run's ``config.yaml`` records
the K chosen. ``federation.pass_cost: auto`` is measured the same way
(:func:`measure_pass_cost`) and recorded, so that a resumed run groups its clients' batches
into the same passes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from fedpet.algorithms import PlainTraining
from fedpet.cohort import Job
from fedpet.config import FederationConfig
from fedpet.errors import FedpetError, one_line
from fedpet.experiment import Experiment, with_federation
from fedpet.state import extract

FREE_FRACTION = 0.9
"""The share of a GPU's free memory a planned cohort may take (the rest: allocator slack)."""

GAIN = 1.05
"""How much faster a larger K must probe on the CPU to be chosen."""

ONE_PASS = 10**9
"""A measured pass cost that makes every step one pass."""

OPTIMIZER_COPIES = {"adamw": 4, "sgd": 2}
"""A trainable tensor's copies per client: itself, its gradient, and AdamW's two moments."""


@dataclass(frozen=True)
class MemoryPlan:
    """The memory one client adds to a cohort, in bytes.

    ``activations``: what autograd keeps for the backward pass of one batch of
    ``train.batch_size`` sequences of the longest length; ``state``: its trainable tensors
    with their gradients and optimizer state.
    """

    activations: int
    state: int

    def bytes(self, clients: int) -> int:
        """The estimate for ``clients`` trained together."""
        return clients * (self.activations + self.state)


def worst_batch(exp: Experiment) -> np.ndarray:
    """One client's batch of the longest training examples (the most activations)."""
    longest = np.argsort([-len(ids) for ids in exp.train.input_ids], kind="stable")
    return longest[: exp.cfg.train.batch_size]


def probe(exp: Experiment, indices: np.ndarray, clients: int) -> None:
    """One step of ``clients`` clients trained together, each on ``indices``.

    They start from the model's current trainable state, which stays untouched.
    """
    start = extract(exp.params)
    jobs = [Job(indices, start, PlainTraining(), i) for i in range(clients)]
    exp.train_cohort(jobs, train=dataclasses.replace(exp.cfg.train, local_epochs=1, max_steps=1))


def timed_probe(exp: Experiment, indices: np.ndarray, clients: int) -> float:
    """The seconds of one :func:`probe` step, the device synchronised."""
    cuda = exp.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(exp.device)
    began = time.perf_counter()
    probe(exp, indices, clients)
    if cuda:
        torch.cuda.synchronize(exp.device)
    return time.perf_counter() - began


def plan(exp: Experiment) -> MemoryPlan:
    """Measure what one client adds to a cohort on ``exp``'s device (see :class:`MemoryPlan`)."""
    frozen = {p.data_ptr() for p in exp.model.parameters()}
    frozen |= {b.data_ptr() for b in exp.model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        probe(exp, worst_batch(exp), 1)
    copies = OPTIMIZER_COPIES.get(exp.cfg.train.optimizer, 4)
    state = sum(p.numel() * 4 for p in exp.params.values()) * copies  # fp32, as extracted
    return MemoryPlan(sum(saved.values()), state)


def fits(exp: Experiment, memory: MemoryPlan) -> int:
    """The most clients (up to the round's) whose planned memory fits the GPU's free memory."""
    free, _ = torch.cuda.mem_get_info(exp.device)
    per_round = exp.cfg.federation.clients_per_round
    return max(1, min(per_round, int(free * FREE_FRACTION) // max(1, memory.bytes(1))))


def fastest(exp: Experiment, most: int) -> int:
    """The K up to ``most`` whose probe cohort step trains the most examples a second.

    K doubles from 1 while the rate grows by :data:`GAIN` at least (one step each, after a
    warm-up step at K = 1): a gain within the timing's noise buys no more memory.
    """
    longest = worst_batch(exp)

    def rate(k: int) -> float:
        return k / timed_probe(exp, longest, k)

    rate(1)
    best, best_rate, k = 1, rate(1), 2
    while k <= most:
        measured = rate(k)
        if measured < GAIN * best_rate:
            break
        best, best_rate, k = k, measured, 2 * k
    return best


def measure_pass_cost(exp: Experiment, clients: int) -> int:
    """What one pass of ``clients`` costs beyond its tokens, in tokens.

    A step of ``clients`` clients on the shortest batch and one on the longest (the least
    of two timings each, after a warm-up step) fit ``seconds = fixed + per_token * tokens``;
    the cost is ``fixed / per_token``. Where the longer step takes no more time (bound by
    kernel launches), or every example is as long, it is :data:`ONE_PASS`: one pass.
    """
    widths = np.array([len(ids) for ids in exp.train.input_ids])
    order = np.argsort(widths, kind="stable")
    size = min(exp.cfg.train.batch_size, len(order))
    short, long = order[:size], order[-size:]
    tokens = [clients * size * int(widths[part].max()) for part in (short, long)]
    if tokens[0] == tokens[1]:
        return ONE_PASS
    probe(exp, short, clients)  # warm-up
    spent = [min(timed_probe(exp, part, clients) for _ in range(2)) for part in (short, long)]
    per_token = (spent[1] - spent[0]) / (tokens[1] - tokens[0])
    if per_token <= 0:
        return ONE_PASS
    return min(ONE_PASS, max(0, round(spent[0] / per_token - tokens[0])))


def check_cohort(exp: Experiment) -> None:
    """Refuse, in one line, a method whose trainable modules cannot run per client together.

    Two clients take one step together on two examples; a module that cannot be applied
    per client (data-dependent control flow under ``torch.func.vmap``, an input that is not
    the batch's) fails it.
    """
    try:
        probe(exp, np.arange(min(2, len(exp.train))), 2)
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FedpetError(
            f"method.name = {exp.cfg.method.name!r} is not allowed with "
            f"federation.parallel_clients = {exp.cfg.federation.parallel_clients}: its "
            f"trainable modules cannot run per client in one batched pass ({one_line(reason)})"
        ) from None


def choose(exp: Experiment) -> Experiment:
    """``exp`` with ``federation.parallel_clients`` checked and its ``auto`` replaced by a K.

    Above 1 (or ``auto``), :func:`check_cohort` first; where K is above 1, an ``auto``
    ``federation.pass_cost`` is measured.
    """
    cfg = exp.cfg
    if cfg.federation.parallel_clients == "1":
        return exp
    check_cohort(exp)
    chosen = cfg.federation.parallel_clients
    if chosen == "auto":
        cuda = exp.device.type == "cuda"
        most = cfg.federation.clients_per_round
        chosen = str(fits(exp, plan(exp)) if cuda else fastest(exp, most))
        exp = fill(
            exp,
            dataclasses.replace(exp.cfg.federation, parallel_clients=chosen),
            "parallel_clients",
        )
    if int(chosen) > 1 and cfg.federation.pass_cost == "auto":
        cost = str(measure_pass_cost(exp, int(chosen)))
        exp = fill(exp, dataclasses.replace(exp.cfg.federation, pass_cost=cost), "pass_cost")
    return exp


def fill(exp: Experiment, federation: FederationConfig, field: str) -> Experiment:
    """``exp`` with ``federation``, whose ``field`` fedpet filled (recorded as such)."""
    return dataclasses.replace(exp, cfg=with_federation(exp.cfg, federation, field))
