"""DP-FedAvg (McMahan et al., 2018): clip each update, add Gaussian noise to their sum.

Every client's update is clipped to L2 norm ``C`` (``privacy.clip``); the server sums the
clipped updates with weight 1 each and divides by the expected cohort size ``m``, so one
client moves the sum by at most ``C`` (``2 C`` when it replaces another in a fixed-size
cohort: see :mod:`fedpet.privacy.accountant`). Noise of std ``z C`` on the sum makes the
round a Gaussian mechanism: added once by the server (central), or by each client with std
``z C / sqrt(m)`` (distributed, so that a secure sum carries the whole noise); when fewer
than ``m`` noised updates reach the sum, the server adds the missing share before anything
is released. With adaptive clipping (Andrew et al., 2021) the clip follows a quantile of
the norms.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedpet.algorithms.base import Aggregate
from fedpet.config import Config
from fedpet.privacy.randomness import Draws
from fedpet.state import TrainableState, l2_norm

COUNT_SENSITIVITY = 0.5
"""How far one client moves adaptive clipping's released count (indicators shifted by -1/2)."""


def count_noise(cfg: Config) -> float:
    """Std of the noise on adaptive clipping's count: ``privacy.count_noise`` or m / 20."""
    p = cfg.privacy
    return p.count_noise if p.count_noise is not None else cfg.federation.clients_per_round / 20


def clip(update: TrainableState, bound: float, norm: float | None = None) -> TrainableState:
    """``update`` scaled down to L2 norm ``bound`` if it is longer.

    ``norm`` is the update's L2 norm, when the caller has it already.
    """
    norm = l2_norm(update) if norm is None else norm
    if norm <= bound:
        return update
    return {n: t * (bound / norm) for n, t in update.items()}


def gaussian_noise(like: TrainableState, std: float, seed: int) -> TrainableState:
    """Independent N(0, std^2) values in the names and shapes of ``like``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=gen) * std for n, t in like.items()}


def update_noise_multiplier(z: float, count_noise: float | None) -> float:
    """The updates' share of the noise multiplier ``z``.

    Adaptive clipping's count (sensitivity 1/2, noise std ``count_noise``: multiplier
    ``2 count_noise``) takes the rest, so that the two Gaussian mechanisms compose to one
    of multiplier ``z``: ``(z^-2 - (2 count_noise)^-2)^-1/2``. Without a count, ``z`` itself.
    """
    if count_noise is None or z == 0:
        return z
    return float((z**-2 - (COUNT_SENSITIVITY / count_noise) ** 2) ** -0.5)


def noised_count(within: int, counted: int, std: float, rng: np.random.Generator) -> float:
    """Adaptive clipping's release: ``sum_k (b_k - 1/2)`` plus N(0, std^2) noise.

    ``b_k`` is 1 when client ``k``'s update was within the clip; ``within`` of the
    ``counted`` updates were. Shifting each indicator by -1/2 (as Andrew et al. and
    TF-Privacy do) makes one client move the sum by at most :data:`COUNT_SENSITIVITY`.
    """
    return within - COUNT_SENSITIVITY * counted + float(rng.normal(0.0, std))


def next_clip(clip_bound: float, within: float, quantile: float, lr: float) -> float:
    """Adaptive clipping's geometric step: ``clip * exp(-lr * (within - quantile))``.

    ``within`` is the (noised) fraction of the cohort whose update norm was at most the clip.
    """
    return clip_bound * math.exp(-lr * (within - quantile))


def client_noise_std(cfg: Config) -> float:
    """Each client's share of DP's distributed noise: the sum's std over sqrt(cohort size)."""
    z = cfg.privacy.noise_multiplier or 0.0
    return z * cfg.privacy.clip / math.sqrt(cfg.federation.clients_per_round)


def server_noise_std(cfg: Config, clip_bound: float, noised: int) -> float:
    """The std of the noise the server adds to a round's sum of ``noised`` updates.

    Central noise: all of it, ``z C`` (the updates' share of it under adaptive clipping).
    Distributed noise: the shares of the ``m - noised`` expected clients whose noised update
    did not arrive (failed, late, rejected, dropped out), so that the sum always carries
    std ``z C``.
    """
    dp, m = cfg.privacy, cfg.federation.clients_per_round
    z = dp.noise_multiplier or 0.0
    if dp.noise == "distributed":
        return z * clip_bound * math.sqrt(max(0, m - noised) / m)
    sigma = count_noise(cfg) if dp.target_quantile is not None else None
    return update_noise_multiplier(z, sigma) * clip_bound


def release(
    cfg: Config,
    aggregate: Aggregate,
    clip_bound: float,
    within_clip: int,
    round_: int,
    draws: Draws,
) -> float:
    """DP's server step on a round's sum (clipped at ``clip_bound``); the next round's clip.

    The noise comes from the server's ``draws``.

    The server's noise (:func:`server_noise_std`) goes on the sum, and the mean divides by
    the expected cohort size whatever the number aggregated, so one client moves it by at
    most the clip over that size. With adaptive clipping, the noised count of the updates
    within the clip (``within_clip`` of them) moves the clip.
    """
    dp, m = cfg.privacy, cfg.federation.clients_per_round
    std = server_noise_std(cfg, clip_bound, aggregate.num_clients)
    if std > 0 and aggregate.weighted_sum:
        # the clients' distributed shares are drawn from "dp-noise" (round, client)
        stream = "dp-noise" if dp.noise == "central" else "dp-topup"
        noise = gaussian_noise(aggregate.weighted_sum, std, draws.seed(stream, round_))
        for name, acc in aggregate.weighted_sum.items():
            acc.add_(noise[name])
    aggregate.total_weight = float(m)
    if dp.target_quantile is None:
        return clip_bound
    gen = np.random.default_rng(draws.seed("dp-count", round_))
    released = noised_count(within_clip, aggregate.num_clients, count_noise(cfg), gen)
    within = released / m + COUNT_SENSITIVITY
    return next_clip(clip_bound, within, dp.target_quantile, dp.clip_lr)
