"""DP-FedAvg's two operations (McMahan et al., 2018): clip an update, add Gaussian noise.

Every client's update is clipped to L2 norm ``C`` (``privacy.clip``); the server sums the
clipped updates with weight 1 each and divides by the expected cohort size, so one client
moves the sum by at most ``C``. Noise of std ``z C`` on the sum makes the round a Gaussian
mechanism: added once by the server (central), or by each client with std
``z C / sqrt(expected cohort)`` (distributed, so that a secure sum carries the whole noise).
"""

from __future__ import annotations

import math

import torch

from fedpet.state import TrainableState


def l2_norm(state: TrainableState) -> float:
    """The L2 norm of all of a state's values together."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def clip(update: TrainableState, bound: float) -> TrainableState:
    """``update`` scaled down to L2 norm ``bound`` if it is longer."""
    norm = l2_norm(update)
    if norm <= bound:
        return update
    return {n: t * (bound / norm) for n, t in update.items()}


def gaussian_noise(like: TrainableState, std: float, seed: int) -> TrainableState:
    """Independent N(0, std^2) values in the names and shapes of ``like``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=gen) * std for n, t in like.items()}


def update_noise_multiplier(z: float, count_noise: float | None) -> float:
    """The updates' share of the noise multiplier ``z``.

    Adaptive clipping's count (sensitivity 1/2, noise std ``count_noise``) takes the rest:
    ``(z^-2 - (2 count_noise)^-2)^-1/2``. Without a count, ``z`` itself.
    """
    if count_noise is None or z == 0:
        return z
    return float((z**-2 - (2 * count_noise) ** -2) ** -0.5)


def next_clip(clip_bound: float, within: float, quantile: float, lr: float) -> float:
    """Adaptive clipping's geometric step: ``clip * exp(-lr * (within - quantile))``.

    ``within`` is the (noised) fraction of the cohort whose update norm was at most the clip.
    """
    return clip_bound * math.exp(-lr * (within - quantile))
