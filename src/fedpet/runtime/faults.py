"""Client misbehaviour for the simulation runtime: crashes, stragglers, malicious updates.

Every draw derives from (seed, round, attempt, client), so a run with faults repeats exactly
and resumes exactly. A failing client raises :class:`ClientFailure` from inside its local
training, at a random step; a straggler is ``faults.straggler_slowdown`` times slower on a
simulated clock of ``faults.step_seconds`` per local step, which the server compares with
``federation.round_deadline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedpet.algorithms.base import ClientHook
from fedpet.config import Config
from fedpet.errors import require
from fedpet.seeding import derive_seed
from fedpet.state import TrainableState, l2_norm


class ClientFailure(RuntimeError):
    """A client crashed during local training; its update never arrives."""


@dataclass(frozen=True)
class ClientFaults:
    """What goes wrong with one client in one round attempt.

    Attributes
    ----------
    fail_at_step
        The local step (from 1) at which the client crashes, or None.
    seconds
        Simulated duration of its local training.
    """

    fail_at_step: int | None
    seconds: float
    malicious: bool


def check_faults(cfg: Config) -> None:
    """Fault injection and the server's answer to it (deadline, minimum cohort, retries).

    Injected faults, the simulated deadline and retries belong to the in-process
    simulation: on Flower, nodes fail on their own and run on real time.
    """
    f, x = cfg.federation, cfg.faults
    require(
        f.min_clients_per_round <= f.clients_per_round,
        "federation.min_clients_per_round",
        f.min_clients_per_round,
        f"an integer from 1 to federation.clients_per_round ({f.clients_per_round})",
    )
    require(
        all(k < f.clients for k in x.malicious_clients),
        "faults.malicious_clients",
        x.malicious_clients,
        f"client indices from 0 to {f.clients - 1}",
    )
    if cfg.runtime == "simulation":
        return
    flower = f"on runtime {cfg.runtime!r}"
    require(f.short_round == "skip", "federation.short_round", f.short_round, f"skip {flower}")
    deadline = f.round_deadline
    require(
        deadline is None, "federation.round_deadline", deadline, f"null {flower}: use round_timeout"
    )
    injected = x.client_failure_rate or x.straggler_rate or x.malicious_clients
    require(not injected, "runtime", cfg.runtime, "simulation when faults.* injects faults")


def plan_faults(cfg: Config, round_: int, attempt: int, client: int, steps: int) -> ClientFaults:
    """Draw one client's faults for a round attempt of ``steps`` local steps."""
    x = cfg.faults
    rng = np.random.default_rng(derive_seed(cfg.seed, "faults", round_, attempt, client))
    fails, slow = rng.random(2)  # both always drawn: changing one rate leaves the other alone
    step = int(rng.integers(1, steps + 1))
    slowdown = x.straggler_slowdown if slow < x.straggler_rate else 1.0
    return ClientFaults(
        fail_at_step=step if fails < x.client_failure_rate else None,
        seconds=steps * x.step_seconds * slowdown,
        malicious=client in x.malicious_clients,
    )


class FailingHook:
    """Wraps a client hook; raises :class:`ClientFailure` at the given step's loss."""

    def __init__(self, inner: ClientHook, fail_at_step: int) -> None:
        self.inner = inner
        self.fail_at_step = fail_at_step
        self.step = 0

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The wrapped hook's logits."""
        return self.inner.logits(logits)

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The wrapped hook's loss, until the failing step."""
        self.step += 1
        if self.step == self.fail_at_step:
            raise ClientFailure(f"injected crash at local step {self.step}")
        return self.inner.loss(task_loss, params)


def attack(update: TrainableState, kind: str, norm: float) -> TrainableState:
    """What a malicious client sends instead of ``update``.

    ``nan``: every value NaN; ``norm``: the update's direction scaled to L2 norm ``norm``.
    """
    if kind == "nan":
        return {name: torch.full_like(t, float("nan")) for name, t in update.items()}
    scale = norm / max(l2_norm(update), 1e-12)
    return {name: t * scale for name, t in update.items()}
