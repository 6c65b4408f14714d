"""Where DP's random draws come from: a secret of the party that draws them.

An epsilon against the server, and the amplification by sampling that the accountant
assumes, both need draws that nobody else can predict: the cohort and the server's noise
are the server's, each client's noise share is the client's. The run seed cannot be that
secret: it is in ``config.yaml``, which a run's readers have and Flower's server sends to
every client. So each party draws a 64-bit secret from the operating system's
cryptographic source (:mod:`secrets`) and derives its DP streams from it, each a 64-bit
seed of a torch or numpy generator.

Bitwise resume still holds: a party's secret is kept where it keeps its state. The
server's is in its checkpoint (``state.json``, never published); the in-process
simulation's clients keep theirs in ``clients/dp_secret.json``; a Flower client draws a new
one in each process (its shares after a resume are then fresh draws).

``privacy.reproducible: true`` derives every such stream from the run seed instead:
reproducible, not private. The summary and the model card say so.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpet.config import Config
from fedpet.files import atomic_write, storage_errors
from fedpet.seeding import STREAMS, derive_seed

SECRET_KEY = "dp_secret"
"""The server's secret in its checkpoint's JSON data."""
CLIENTS_FILE = "dp_secret.json"
"""The simulated clients' secret, in the run directory's ``clients/`` folder."""


def private(cfg: Config) -> bool:
    """Whether the run's DP draws come from secrets (DP on, not ``privacy.reproducible``)."""
    return cfg.privacy.enabled and not cfg.privacy.reproducible


@dataclass(frozen=True)
class Draws:
    """One party's source of DP randomness: a secret, or the run seed (not private)."""

    base: int
    secret: bool

    def seed(self, stream: str, *keys: int) -> int:
        """The seed of one stream (e.g. ``dp-noise``, round, client).

        From the run seed: :func:`~fedpet.seeding.derive_seed`'s 32 bits, as every other
        stream of the run. From a secret: 64 bits, so that it cannot be searched for.
        """
        if not self.secret:
            return derive_seed(self.base, stream, *keys)
        words = np.random.SeedSequence([self.base, STREAMS[stream], *keys]).generate_state(2)
        return int(words[0]) << 32 | int(words[1])

    def checkpoint(self) -> dict[str, Any]:
        """What the party keeps to draw the same again after a resume."""
        return {SECRET_KEY: self.base} if self.secret else {}


def fresh(cfg: Config) -> Draws:
    """A new secret from the operating system, or the run seed when not private."""
    return Draws(secrets.randbits(64), True) if private(cfg) else Draws(cfg.seed, False)


def server_draws(cfg: Config, meta: dict[str, Any]) -> Draws:
    """The server's draws: the secret its checkpoint's ``meta`` kept, else a new one."""
    if private(cfg) and SECRET_KEY in meta:
        return Draws(int(meta[SECRET_KEY]), True)
    return fresh(cfg)


def simulated_clients_draws(cfg: Config, run: Path) -> Draws:
    """The in-process clients' draws, kept in the run directory across a resume."""
    if not private(cfg):
        return fresh(cfg)
    path = run / "clients" / CLIENTS_FILE
    with storage_errors(run):
        if path.is_file():
            return Draws(int(json.loads(path.read_text(encoding="utf-8"))[SECRET_KEY]), True)
        draws = fresh(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda t: t.write_text(json.dumps(draws.checkpoint())))
    return draws
