"""Every random choice of a run derives from the run seed through :func:`derive_seed`."""

from __future__ import annotations

import numpy as np

STREAMS = {
    "partition": 1,
    "sampling": 2,
    "train": 3,
    "subsample": 4,
    "faults": 5,
    "codec-up": 6,
    "codec-down": 7,
    "dp-noise": 8,
    "dp-count": 9,
    "attack": 10,
    "dp-topup": 11,
    "client-test": 12,
    "personal": 13,
}


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 32-bit seed for one named random stream of the run (e.g. ``train``, round, client).

    Keys that differ only by trailing zeros give the same seed (numpy pads the entropy
    with zeros): ``(round,)`` and ``(round, 0)`` are one stream, which the runtimes rely on
    (a round's first attempt draws as the round itself). Draws that must be independent of
    each other take streams of their own name.
    """
    entropy = [seed, STREAMS[stream], *keys]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
