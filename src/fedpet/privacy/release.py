"""What a DP run releases: no cohort, no per-client figure, nothing that varies with either.

Amplification by sampling, which the accountant assumes, holds only if nobody learns who
was sampled. A run's outputs (``metrics.jsonl``, ``summary.json``, ``partition.json``, the
trackers, the round lines, an export's model card) would tell it through the cohort's ids,
the clients lost in a round, the bytes and training time of a round (they grow with the
cohort), whether a round was skipped, and each client's size and label counts. Under DP
they are left out of every output, by the names listed here; the counters a DP run withholds
are marked in :mod:`fedpet.runtime.counts`.
"""

from __future__ import annotations

from typing import Any

from fedpet.config import Config
from fedpet.privacy.randomness import private

ROUND_WITHHELD = ("clients", "aggregated", "attempts", "skipped", "train_seconds")
"""A round's figures (besides its withheld counters) that tell the cohort."""

SUMMARY_WITHHELD = ("rounds_skipped", "rounds_retried", "train_seconds", "wall_seconds")
"""A run's totals (besides its withheld counters') that add up what the cohorts were."""

PARTITION_WITHHELD = ("clients", "label_skew")
"""The per-client partition statistics (sizes, label counts) and what they add up to."""


def released(cfg: Config, figures: dict[str, Any], withheld: tuple[str, ...]) -> dict[str, Any]:
    """``figures`` without the ``withheld`` names under DP; all of them otherwise."""
    if not cfg.privacy.enabled:
        return figures
    return {k: v for k, v in figures.items() if k not in withheld}


def released_partition(cfg: Config, report: dict[str, Any]) -> dict[str, Any]:
    """A partition's description as a run releases it: under DP, the client count only."""
    if not cfg.privacy.enabled:
        return report
    return {**released(cfg, report, PARTITION_WITHHELD), "num_clients": len(report["clients"])}


def dp_summary(cfg: Config, epsilon: float, payload_bytes: tuple[int, int]) -> dict[str, Any]:
    """What a DP run's summary says of its guarantee and of what one client sends.

    ``payload_bytes`` (up, down) is one client's payload in each direction, fixed by the
    trainable state and the codecs: what a round sends per sampled client, with no count
    of the clients.
    """
    p = cfg.privacy
    return {
        "epsilon": epsilon,
        "delta": p.delta,
        "noise_multiplier": p.noise_multiplier,
        "clip": p.clip,
        "dp_randomness": "secret" if private(cfg) else "run seed: reproducible, not private",
        "bytes_per_client_up": payload_bytes[0],
        "bytes_per_client_down": payload_bytes[1],
    }
