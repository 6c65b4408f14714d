"""Client-level DP (see :mod:`fedpet.privacy.dp`) as a round stage.

Client half: with distributed noise, the client clips its update and adds its share of the
noise. Server half: every update weighs the same and, with central noise, is clipped here
(counting those within the clip for adaptive clipping); the round's sum gets the server's
noise and the mean its fixed denominator (:func:`~fedpet.privacy.dp.release`); the clip
used is logged, the next one checkpointed. Clients withhold their example counts and losses.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedpet.algorithms.base import Aggregate
from fedpet.config import Config
from fedpet.privacy.dp import client_noise_std, clip, gaussian_noise, release
from fedpet.privacy.randomness import Draws
from fedpet.stages.base import Arrival, ClientSide, Stage
from fedpet.state import TrainableState, add, l2_norm


class DifferentialPrivacy(Stage):
    """DP-FedAvg's halves, with central or distributed noise and a fixed or adaptive clip.

    ``draws`` is the randomness of the party the stage runs for: a client's noise share
    comes from the client's, the server's noise from the server's.
    """

    name: ClassVar[str] = "dp"
    withholds_stats: ClassVar[bool] = True

    def __init__(self, cfg: Config, draws: Draws) -> None:
        self.cfg, self.draws = cfg, draws
        self.clip = cfg.privacy.clip
        self.next_clip = self.clip
        self.within_clip = 0

    def client(self, update: TrainableState, side: ClientSide) -> TrainableState:
        """With distributed noise: the update clipped, plus the client's noise share."""
        dp = self.cfg.privacy
        if dp.noise != "distributed":
            return update  # the server clips
        seed = self.draws.seed("dp-noise", side.round, side.client)
        noise = gaussian_noise(update, client_noise_std(self.cfg), seed)
        return add(clip(update, dp.clip), noise)

    def open(self) -> None:
        """A fresh count of the updates within the clip; no release yet."""
        self.within_clip = 0
        self.next_clip = self.clip

    def server(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float | None]:
        """Weight 1; with central noise, the update clipped (and counted if within)."""
        if self.cfg.privacy.noise == "central":
            self.within_clip += l2_norm(update) <= self.clip
            update = clip(update, self.clip)
        return update, 1.0

    def release(self, aggregate: Aggregate, round_: int) -> None:
        """Noise the sum, fix the mean's denominator, and step an adaptive clip."""
        self.next_clip = release(
            self.cfg, aggregate, self.clip, self.within_clip, round_, self.draws
        )

    def end_round(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Log the round's clip; checkpoint (and move to) the next round's."""
        used, self.clip = self.clip, self.next_clip
        return {"dp_clip": used}, {"dp_clip": self.clip}

    def restore(self, meta: dict[str, Any]) -> None:
        """The clip the checkpointed run would have used next."""
        self.clip = self.next_clip = float(meta.get("dp_clip", self.cfg.privacy.clip))
