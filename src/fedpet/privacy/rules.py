"""What client-level DP and secure aggregation need of a config, and what would void them."""

from __future__ import annotations

from fedpet.algorithms import ALGORITHMS, Algorithm
from fedpet.config import Config
from fedpet.errors import require
from fedpet.privacy.dp import count_noise


def check_privacy(cfg: Config, algorithm: Algorithm) -> None:
    """DP's options together, and the rest of the config where it would void the guarantee."""
    p = cfg.privacy
    if not p.enabled:
        return
    z = p.noise_multiplier
    require(
        z is not None or p.target_epsilon is not None,
        "privacy.noise_multiplier",
        z,
        "a number >= 0, or set privacy.target_epsilon to calibrate it",
    )
    why = "with privacy.enabled"
    require(not cfg.centralized, "centralized", True, f"false {why} (client-level DP)")
    require(
        not cfg.data.client_test_fraction,
        "data.client_test_fraction",
        cfg.data.client_test_fraction,
        f"0 {why} (clients.csv publishes each client's labels and scores, which "
        "client-level DP does not cover)",
    )
    require(
        not cfg.secagg.enabled or p.noise == "distributed",
        "privacy.noise",
        p.noise,
        "distributed with secagg.enabled (the server never sees an update to clip)",
    )
    require(
        p.sampling == "poisson" or p.accountant == "rdp",
        "privacy.accountant",
        p.accountant,
        "rdp with privacy.sampling fixed (the PLD accountant takes Poisson sampling only)",
    )
    require(
        p.noise == "central" or p.sampling == "fixed",
        "privacy.noise",
        p.noise,
        "central with Poisson sampling (a smaller cohort would add less noise than accounted); "
        "distributed needs privacy.sampling fixed",
    )
    require(
        p.noise == "central" or cfg.codec.up == "fp32",
        "codec.up",
        cfg.codec.up,
        "fp32 with privacy.noise distributed (a lossy codec rounds the clipped, noised update "
        "after the clip, so one client could move the sum by more than the noise covers)",
    )
    if p.target_quantile is not None:
        require(p.noise == "central", "privacy.noise", p.noise, "central with adaptive clipping")
        sigma = count_noise(cfg)
        require(
            z is None or z < 2 * sigma,
            "privacy.noise_multiplier",
            z,
            f"below 2 x count_noise = {2 * sigma:g} with adaptive clipping (the count "
            "takes that share of the budget); raise privacy.count_noise",
        )
    allowed = [name for name, a in ALGORITHMS.items() if a.allows_dp]
    require(
        algorithm.allows_dp,
        "algorithm.name",
        cfg.algorithm.name,
        f"one of {', '.join(allowed)} {why}",
    )
    f = cfg.federation
    mun = f.max_update_norm
    require(mun is None, "federation.max_update_norm", mun, f"null {why} (clipping bounds updates)")
    require(
        f.short_round == "skip",
        "federation.short_round",
        f.short_round,
        f"skip {why} (a retry draws another cohort the accountant does not count)",
    )
    require(
        not cfg.codec.feedback,
        "codec.error_feedback",
        cfg.codec.feedback,
        f"false {why} (a residual carries past updates past the clip)",
    )


def check_secure_aggregation(cfg: Config, algorithm: Algorithm) -> None:
    """Secure aggregation rules out what needs single updates: the server never sees one."""
    if not cfg.secagg.enabled:
        return
    flower = "a Flower runtime: --runtime flower-sim, or a deployment through flwr run"
    rt = cfg.runtime
    require(rt != "simulation", "runtime", rt, f"with secagg.enabled, {flower}")
    require(
        algorithm.allows_secure_aggregation,
        "algorithm.name",
        cfg.algorithm.name,
        "with secagg.enabled, an algorithm that sums the updates as sent (fedavg)",
    )
    mun = cfg.federation.max_update_norm
    require(mun is None, "federation.max_update_norm", mun, "null with secagg.enabled")
    require(cfg.codec.up == "fp32", "codec.up", cfg.codec.up, "fp32 with secagg.enabled")
    cpr = cfg.federation.clients_per_round
    require(cpr >= 2, "federation.clients_per_round", cpr, "at least 2 with secagg.enabled")
