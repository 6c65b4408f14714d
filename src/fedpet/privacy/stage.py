"""Client-level DP (see :mod:`fedpet.privacy.dp`) as two round stages, one per noise mode.

Both withhold each client's example count and loss (statistics of its data that no noise
covers), weigh every update alike, and release the round's sum with the server's noise
and the mean's fixed denominator (:func:`~fedpet.privacy.dp.release`), stepping an adaptive
clip; the clip used is the round's ``dp_clip`` metric and the next one is checkpointed.
With central noise the server clips each update; with distributed noise each client clips
its own and adds its share of the noise.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from fedpet.algorithms.base import Aggregate
from fedpet.config import Config
from fedpet.privacy.dp import client_noise_std, clip, gaussian_noise, release
from fedpet.privacy.randomness import Draws
from fedpet.stages.base import Arrival, Report, Side, Stage
from fedpet.state import TrainableState, add, l2_norm

WITHIN = "dp_within_clip"
"""The tally of the updates within the clip, which adaptive clipping counts."""


class DifferentialPrivacy(Stage):
    """DP-FedAvg's halves common to both noise modes.

    ``draws`` is the randomness of the party the stage runs for: a client's noise share
    comes from the client's, the server's noise from the server's.
    """

    name: ClassVar[str] = "dp"

    def __init__(self, cfg: Config, draws: Draws) -> None:
        self.cfg, self.draws = cfg, draws
        self.clip = cfg.privacy.clip

    def client(
        self, update: TrainableState, report: Report, side: Side
    ) -> tuple[TrainableState, Report]:
        """The update as it is; nothing reported with it."""
        return update, Report()

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """Each client's update weighs 1 (a sum of several, their number)."""
        return update, float(arrival.clients)

    def release(
        self, aggregate: Aggregate | None, tally: Counter[str], round_: int
    ) -> dict[str, float]:
        """Noise the sum, fix the mean's denominator, and step an adaptive clip.

        A skipped round releases nothing and keeps the clip. Either way the round's
        ``dp_clip`` is the clip it used.
        """
        used = self.clip
        if aggregate is not None:
            self.clip = release(self.cfg, aggregate, used, tally[WITHIN], round_, self.draws)
        return {"dp_clip": used}

    def state_dict(self) -> dict[str, Any]:
        """The clip of the next round."""
        return {"dp_clip": self.clip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The clip the checkpointed run would have used next."""
        self.clip = float(state.get("dp_clip", self.cfg.privacy.clip))


class CentralDP(DifferentialPrivacy):
    """Central noise: the server clips each update (counting those within the clip)."""

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """The update clipped, weight 1."""
        norm = l2_norm(update)
        arrival.tally[WITHIN] += norm <= self.clip
        return clip(update, self.clip, norm), 1.0


class DistributedDP(DifferentialPrivacy):
    """Distributed noise: each client clips its update and adds its share of the noise."""

    def client(
        self, update: TrainableState, report: Report, side: Side
    ) -> tuple[TrainableState, Report]:
        """The update clipped, plus the client's noise share; nothing reported with it."""
        seed = self.draws.seed("dp-noise", side.round, side.client)
        noise = gaussian_noise(update, client_noise_std(self.cfg), seed)
        return add(clip(update, self.cfg.privacy.clip), noise), Report()


def dp_stage(cfg: Config, draws: Draws) -> Stage | None:
    """The DP stage of ``cfg``'s noise mode, or None without DP."""
    if not cfg.privacy.enabled:
        return None
    return CentralDP(cfg, draws) if cfg.privacy.noise == "central" else DistributedDP(cfg, draws)
