"""From input to a valid, resolved run config: parse, the owners' checks, what fedpet fills.

:func:`build_config` parses a nested mapping and dotted overrides (:mod:`fedpet.config`)
with the registered methods' and algorithms' options classes, then :func:`validate` asks
every owner to check its part: the data section, the codecs, the algorithm's needs and its
own options, faults, secure aggregation and privacy. :func:`resolve` fills in what the
config leaves to fedpet, so that the saved ``config.yaml`` holds every number a run used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fedpet.algorithms import ALGORITHMS, Algorithm, get_algorithm
from fedpet.codecs import check_codecs
from fedpet.config import (
    AlgorithmOptions,
    Config,
    FederationConfig,
    MethodOptions,
    parse,
    with_overrides,
)
from fedpet.data.checks import check_data, check_objective
from fedpet.devices import check_device, resolve_device
from fedpet.errors import FedpetError, require
from fedpet.methods import METHODS
from fedpet.privacy.dp import count_noise
from fedpet.privacy.rules import check_privacy, check_secure_aggregation
from fedpet.quantization import check_quantization
from fedpet.runtime.faults import check_faults


class Registered:
    """The options classes of the registered methods and algorithms, by name."""

    def names(self, base: type[Any]) -> list[str]:
        """Every registered method's or algorithm's name."""
        return list(METHODS if base is MethodOptions else ALGORITHMS)

    def options_class(self, base: type[Any], name: str) -> type[Any]:
        """The options class the method or algorithm ``name`` declares."""
        if base is MethodOptions:
            return METHODS[name].options
        assert base is AlgorithmOptions, base
        return ALGORITHMS[name].options


def build_config(
    base: Mapping[str, Any] | None = None, overrides: Iterable[tuple[str, Any]] = ()
) -> Config:
    """Make a validated :class:`~fedpet.config.Config` from a mapping and dotted overrides."""
    tree = with_overrides(base or {}, overrides)
    cfg = parse(tree, Registered())
    fed = cfg.federation
    if (
        "clients_per_round" not in tree.get("federation", {})
        and fed.clients_per_round > fed.clients
    ):
        # the default of 10 per round means every client when there are fewer
        federation = dataclasses.replace(fed, clients_per_round=max(1, fed.clients))
        cfg = dataclasses.replace(cfg, federation=federation)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Ask every owner to check its part of ``cfg``; raise the first FedpetError found.

    Each field's own rule was checked when it was parsed.
    """
    check_data(cfg)
    check_codecs(cfg)
    check_device(cfg)
    check_quantization(cfg)
    check_objective(cfg)
    require(
        not cfg.data.client_test_fraction or cfg.data.objective == "classify",
        "data.client_test_fraction",
        cfg.data.client_test_fraction,
        "0 with data.objective generate (clients are scored on a classification metric)",
    )
    f = cfg.federation
    require(
        f.clients_per_round <= f.clients,
        "federation.clients_per_round",
        f.clients_per_round,
        f"an integer from 1 to federation.clients ({f.clients})",
    )
    require(
        not (cfg.centralized and cfg.runtime != "simulation"),
        "runtime",
        cfg.runtime,
        "simulation with --centralized (it trains in this process)",
    )
    algorithm = get_algorithm(cfg.algorithm)
    check_needs(cfg, algorithm)
    algorithm.check(cfg)
    check_faults(cfg)
    check_secure_aggregation(cfg, algorithm)
    check_privacy(cfg, algorithm)
    check_parallel(cfg, algorithm)


def check_parallel(cfg: Config, algorithm: Algorithm) -> None:
    """Refuse ``federation.parallel_clients`` above 1 where clients cannot train together."""
    k = cfg.federation.parallel_clients
    if k == "1":
        return
    key = "federation.parallel_clients"
    require(
        not cfg.centralized and cfg.runtime == "simulation",
        key,
        k,
        "1 with --centralized or a Flower runtime (one client trains at a time there)",
    )
    require(
        cfg.method.name != "full",
        key,
        k,
        "1 with method full (each client would stack its own copy of the whole model)",
    )
    require(
        algorithm.shares_base,
        key,
        k,
        f"1 with algorithm {cfg.algorithm.name} (its clients train on different base weights)",
    )


def check_needs(cfg: Config, algorithm: Algorithm) -> None:
    """Refuse what the algorithm's declared needs and capabilities rule out."""
    needs, name = algorithm.needs, cfg.algorithm.name
    with_it = f"with algorithm {name}"
    if needs.method is not None:
        m = cfg.method.name
        require(m == needs.method, "method.name", m, f"{needs.method} {with_it}")
    t = cfg.train
    if needs.optimizer is not None:
        require(
            t.optimizer == needs.optimizer,
            "train.optimizer",
            t.optimizer,
            f"{needs.optimizer} {with_it}",
        )
    if needs.constant_schedule:
        require(t.schedule == "constant", "train.schedule", t.schedule, f"constant {with_it}")
    if needs.unclipped_gradients:
        require(
            t.max_grad_norm is None,
            "train.max_grad_norm",
            t.max_grad_norm,
            f"null {with_it} (it assumes unclipped local gradients): "
            "--set train.max_grad_norm=null",
        )


UNFILLED = {
    "device": "auto",
    "train.lr": None,
    "privacy.noise_multiplier": None,
    "federation.clients": FederationConfig().clients,  # a natural partition's, from its data
    "federation.parallel_clients": "auto",  # chosen for the machine when the run started
    "federation.pass_cost": "auto",  # measured on the machine when the run started
}
"""What each field :func:`resolve` may fill held before it was filled."""


def template(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A run's saved config as the start of another: the fields fedpet filled, unfilled.

    So a ``config.yaml`` given as ``--config`` with another method gets that method's
    learning rate, not the old one's, and a device or DP noise resolved afresh.
    """
    filled = tree.get("filled") or []
    if not isinstance(filled, list) or not all(isinstance(name, str) for name in filled):
        raise FedpetError(
            f"filled = {filled!r} is not allowed: a list of the field names fedpet filled "
            "(e.g. [train.lr, device]), as a run's config.yaml holds"
        )
    unfilled = [(name, UNFILLED[name]) for name in filled if name in UNFILLED]
    rest = {key: value for key, value in tree.items() if key != "filled"}
    return with_overrides(rest, unfilled)


def resolve(cfg: Config) -> Config:
    """Fill in what the config leaves to fedpet, and say which fields in ``filled``.

    The device ``auto`` means on this machine, the method's default learning rate, and DP's
    noise multiplier for a target epsilon (calibrated for the planned rounds).
    """
    filled = list(cfg.filled)
    if cfg.device == "auto":
        filled.append("device")
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    if cfg.train.lr is None:
        filled.append("train.lr")
        train = dataclasses.replace(cfg.train, lr=METHODS[cfg.method.name].default_lr)
        cfg = dataclasses.replace(cfg, train=train)
    p, f = cfg.privacy, cfg.federation
    if p.enabled and p.target_epsilon is not None:
        filled.append("privacy.noise_multiplier")
        from fedpet.privacy.accountant import calibrate

        z = calibrate(p, f.clients, f.clients_per_round, f.rounds)
        privacy = dataclasses.replace(p, noise_multiplier=z)
        cfg = dataclasses.replace(cfg, privacy=privacy)
        if p.target_quantile is not None and z >= 2 * count_noise(cfg):
            raise FedpetError(
                f"privacy.target_epsilon = {p.target_epsilon} is not allowed with adaptive "
                f"clipping: it needs noise multiplier {z:.3g}, at least 2 x count_noise = "
                f"{2 * count_noise(cfg):g}; raise privacy.count_noise or the target"
            )
    return dataclasses.replace(cfg, filled=tuple(dict.fromkeys(filled)))
