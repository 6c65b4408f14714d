"""The run configuration: frozen dataclasses, built from YAML plus dotted overrides, validated.

A config is assembled in one direction only: defaults, then a YAML file, then
``--set section.field=value`` overrides (the CLI's flags are overrides too). The result
is validated once, and :func:`resolve` fills the per-method defaults (learning rates) so
that the saved ``config.yaml`` holds every number the run used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from fedpet.errors import FedpetError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


RUNTIMES = ("simulation", "flower-sim", "flower")
"""In process; Flower's simulation engine; a Flower deployment, started with ``flwr run``."""


@dataclass(frozen=True)
class DataConfig:
    """Which task, how it is tokenized, subsampled and partitioned across clients."""

    task: str = "rotten_tomatoes"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    client_column: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    data_dir: str | None = None
    max_length: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_fraction: float | None = None
    split_seed: int = 0
    partition: str = "dirichlet"
    alpha: float = 1.0
    min_client_size: int = 1
    labels_per_client: int = 2


@dataclass(frozen=True)
class MethodConfig:
    """The PETuning method and its options (each method reads the fields it needs)."""

    name: str = "lora"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    adapter: str = "pfeiffer"
    reduction_factor: int = 16
    num_virtual_tokens: int = 10


@dataclass(frozen=True)
class TrainConfig:
    """Local (client) training, and centralized training for ``--centralized``."""

    local_epochs: int = 1
    batch_size: int = 16
    lr: float | None = None
    head_lr: float = 3e-2
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    dropout: float | None = None
    epochs: int = 1
    eval_batch_size: int = 128


@dataclass(frozen=True)
class FederationConfig:
    """Clients, participation and rounds.

    ``clients_per_round`` left unset means 10, or every client when there are fewer.
    """

    clients: int = 100
    clients_per_round: int = 10
    rounds: int = 16
    max_update_norm: float | None = None
    round_timeout: float = 600.0
    round_deadline: float | None = None
    min_clients_per_round: int = 1
    short_round: str = "skip"
    max_retries: int = 2


@dataclass(frozen=True)
class FaultConfig:
    """Client misbehaviour injected by the simulation runtime, to test a setup's robustness.

    Every draw derives from (seed, round, attempt, client), so faults repeat exactly.
    """

    client_failure_rate: float = 0.0
    straggler_rate: float = 0.0
    straggler_slowdown: float = 10.0
    step_seconds: float = 1.0
    malicious_clients: tuple[int, ...] = ()
    attack: str = "nan"
    attack_norm: float = 1e6


@dataclass(frozen=True)
class AlgorithmConfig:
    """The FL algorithm (client hooks + server update) and its options.

    ``server_lr`` null means the algorithm's own default (1, or 1e-2 for the adaptive
    server optimizers); ``mu`` is FedProx's proximal weight, ``momentum`` FedAvgM's,
    ``beta1``/``beta2``/``tau`` those of FedAdam, FedYogi and FedAdagrad. ``fedrs``, with any
    algorithm, scales the logits of the classes a client does not hold by that factor in its
    local training (FedRS's restricted softmax); null leaves them alone. ``ranks``, for
    ``hetlora`` and ``flexlora``, are LoRA ranks assigned to the clients in turn (client ``k``
    trains rank ``ranks[k % len(ranks)]``, at most ``method.r``, the global rank); empty
    gives every client ``method.r``.
    """

    name: str = "fedavg"
    server_lr: float | None = None
    trim_fraction: float = 0.2
    mu: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    fedrs: float | None = None
    ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class CodecConfig:
    """How states and updates are encoded on the wire, per direction (``fedpet.codecs``).

    ``error_feedback``: each client adds what its previous uploads lost to the next one (its
    residual kept on disk); null turns it on for top-k uploads only.
    """

    up: str = "fp32"
    down: str = "fp32"
    error_feedback: bool | None = None

    @property
    def feedback(self) -> bool:
        """Whether uploads use error feedback."""
        if self.error_feedback is None:
            return self.up.startswith("topk:")
        return self.error_feedback


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg; ``fedpet.privacy``).

    Each update is clipped to L2 norm ``clip`` and weighted 1; Gaussian noise of std
    ``noise_multiplier * clip`` goes on the sum, added by the server (``noise: central``) or
    split across the clients (``distributed``). Cohorts are drawn by ``sampling``:
    ``poisson`` (each client with probability clients_per_round / clients) or ``fixed``
    (that many, without replacement). ``accountant`` (``rdp`` or ``pld``) reports epsilon at
    ``delta`` every round; a ``target_epsilon`` sets the noise multiplier, before the run, to
    the smallest that spends exactly that over the planned rounds (replacing any given).

    With ``target_quantile`` the clip adapts (Andrew et al., 2021): each round it moves by
    ``exp(-clip_lr * (b - target_quantile))``, ``b`` the noised fraction of the cohort whose
    update was within it (count noise std ``count_noise``, default clients_per_round / 20).
    Part of the privacy budget pays for the count: the updates' noise multiplier is
    ``(z^-2 - (2 count_noise)^-2)^-1/2``, and epsilon is that of ``z``.
    """

    enabled: bool = False
    clip: float = 1.0
    target_quantile: float | None = None
    clip_lr: float = 0.2
    count_noise: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    noise: str = "central"
    sampling: str = "poisson"
    accountant: str = "rdp"


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation with Flower's SecAgg+: the server learns only the cohort's sum.

    Each client scales its update by its example count, clips every value to
    ``[-clipping_range, clipping_range]`` and quantizes it to 2**22 levels before masking.
    ``shares`` is the fraction of the cohort each client shares its mask secrets with, and
    ``threshold`` the fraction of those shares needed to unmask a client that dropped out.
    """

    enabled: bool = False
    clipping_range: float = 8.0
    shares: float = 1.0
    threshold: float = 0.5


@dataclass(frozen=True)
class Config:
    """A whole run; ``config.yaml`` in a run directory is this, resolved."""

    seed: int = 0
    model: str = DEFAULT_MODEL
    pooling: str = "auto"
    normalize_embeddings: bool = False
    centralized: bool = False
    runtime: str = "simulation"
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), as written to ``config.yaml``."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; unreadable or malformed files are a FedpetError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FedpetError(f"config: cannot read {str(path)!r}: {exc.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise FedpetError(f"config: {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FedpetError(
            f"config: {str(path)!r} must hold a mapping of fields, not a list or scalar"
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``section.field=value``; the value is read as YAML (``8``, ``1e-3``, ``[a, b]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise FedpetError(f"--set {item!r}: expected KEY=VALUE, e.g. method.r=16")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(
    base: Mapping[str, Any] | None = None, overrides: Iterable[tuple[str, Any]] = ()
) -> Config:
    """Make a validated :class:`Config` from a nested mapping and dotted overrides."""
    tree = with_overrides(base or {}, overrides)
    cfg: Config = _from_mapping(Config, tree, prefix="")
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


def with_overrides(base: Mapping[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A nested copy of ``base`` with each dotted ``section.field`` override set in it."""
    tree: dict[str, Any] = _nested_copy(base)
    for key, value in overrides:
        _set_dotted(tree, key, value)
    return tree


def _nested_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _nested_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FedpetError(f"{key}: {part!r} is a field, not a section")
        node = child
    node[leaf] = value


def _from_mapping(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise FedpetError(f"{prefix}{key}: unknown field; allowed here: {allowed}")
    kwargs: dict[str, Any] = {}
    for name in names & set(data):
        hint, value, dotted = hints[name], data[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise FedpetError(
                    f"{dotted}: is a section; give its fields, e.g. {dotted}.FIELD=..."
                )
            kwargs[name] = _from_mapping(hint, value, prefix=f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, hint, dotted)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else str(value).split(",")
        item = get_args(hint)[0]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, key) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise FedpetError(f"{key} = {value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise FedpetError(f"{key} = {value!r}: expected an integer")
    if hint is float:
        number = math.nan
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
        if not math.isfinite(number):
            raise FedpetError(f"{key} = {value!r}: expected a finite number")
        return number
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise FedpetError(f"{key} = {value!r}: expected a string")
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise FedpetError(f"{key} = {value!r} is not allowed: {allowed}")


def _choice(key: str, value: str, choices: Iterable[str]) -> None:
    options = sorted(choices)
    _check(value in options, key, value, "choose one of " + ", ".join(options))


def validate(cfg: Config) -> None:
    """Check every field against what is allowed; raise FedpetError naming the first bad one."""
    from fedpet.algorithms import ALGORITHMS
    from fedpet.codecs import SPEC_HELP, get_codec
    from fedpet.data.partition import PARTITIONERS
    from fedpet.data.tasks import check_task
    from fedpet.methods import METHODS

    d, m, t, f = cfg.data, cfg.method, cfg.train, cfg.federation
    for key, seed in (("seed", cfg.seed), ("data.split_seed", d.split_seed)):
        _check(0 <= seed < 2**32, key, seed, "an integer from 0 to 2**32 - 1")
    check_task(d.task)
    _choice("data.partition", d.partition, PARTITIONERS)
    _choice("method.name", m.name, METHODS)
    _choice("algorithm.name", cfg.algorithm.name, ALGORITHMS)
    for key in ("up", "down"):
        spec = getattr(cfg.codec, key)
        try:
            get_codec(spec)
        except ValueError:
            _check(False, f"codec.{key}", spec, SPEC_HELP)
    _choice("pooling", cfg.pooling, ("auto", "mean", "cls"))
    _choice("runtime", cfg.runtime, RUNTIMES)
    _check(
        not (cfg.centralized and cfg.runtime != "simulation"),
        "runtime",
        cfg.runtime,
        "simulation with --centralized (it trains in this process)",
    )
    _choice("train.optimizer", t.optimizer, ("adamw", "sgd"))
    _choice("train.schedule", t.schedule, ("constant", "linear"))
    _choice("method.adapter", m.adapter, ("houlsby", "pfeiffer"))
    _check(d.alpha > 0, "data.alpha", d.alpha, "a number > 0 (smaller = stronger label skew)")
    mcs = d.min_client_size
    _check(mcs >= 1, "data.min_client_size", mcs, "an integer >= 1")
    lpc = d.labels_per_client
    _check(lpc >= 1, "data.labels_per_client", lpc, "an integer >= 1 (at most the labels)")
    _check(d.max_length >= 8, "data.max_length", d.max_length, "an integer >= 8")
    mts = d.max_train_samples
    _check(mts is None or mts >= 1, "data.max_train_samples", mts, "an integer >= 1 or null")
    tf = d.train_fraction
    _check(tf is None or 0 < tf <= 1, "data.train_fraction", tf, "a number in (0, 1] or null")
    mes = d.max_eval_samples
    _check(mes is None or mes >= 1, "data.max_eval_samples", mes, "an integer >= 1 or null")
    _check(f.clients >= 1, "federation.clients", f.clients, "an integer >= 1")
    _check(
        1 <= f.clients_per_round <= f.clients,
        "federation.clients_per_round",
        f.clients_per_round,
        f"an integer from 1 to federation.clients ({f.clients})",
    )
    _check(f.rounds >= 1, "federation.rounds", f.rounds, "an integer >= 1")
    mun = f.max_update_norm
    _check(mun is None or mun > 0, "federation.max_update_norm", mun, "a number > 0 or null")
    _check(t.local_epochs >= 1, "train.local_epochs", t.local_epochs, "an integer >= 1")
    _check(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "an integer >= 1")
    _check(t.lr is None or t.lr > 0, "train.lr", t.lr, "a number > 0, or null for the method's")
    _check(t.head_lr > 0, "train.head_lr", t.head_lr, "a number > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    mgn = t.max_grad_norm
    _check(mgn is None or mgn > 0, "train.max_grad_norm", mgn, "a number > 0, or null for none")
    drop = t.dropout
    _check(drop is None or 0 <= drop < 1, "train.dropout", drop, "a number in [0, 1) or null")
    _check(0 <= m.lora_dropout < 1, "method.lora_dropout", m.lora_dropout, "a number in [0, 1)")
    _check(m.r >= 1, "method.r", m.r, "an integer >= 1")
    _check(m.lora_alpha >= 1, "method.lora_alpha", m.lora_alpha, "an integer >= 1")
    _check(
        m.reduction_factor >= 1, "method.reduction_factor", m.reduction_factor, "an integer >= 1"
    )
    nvt = m.num_virtual_tokens
    _check(nvt >= 1, "method.num_virtual_tokens", nvt, "an integer >= 1")
    _validate_algorithm(cfg)
    _validate_faults(cfg)
    _validate_secagg(cfg)
    _validate_privacy(cfg)


def _validate_privacy(cfg: Config) -> None:
    """DP's options, and what would void its guarantee."""
    p = cfg.privacy
    _choice("privacy.noise", p.noise, ("central", "distributed"))
    _choice("privacy.sampling", p.sampling, ("poisson", "fixed"))
    _choice("privacy.accountant", p.accountant, ("rdp", "pld"))
    _check(p.clip > 0, "privacy.clip", p.clip, "an L2 norm bound > 0")
    _check(0 < p.delta < 1, "privacy.delta", p.delta, "a number in (0, 1)")
    z, target = p.noise_multiplier, p.target_epsilon
    _check(z is None or z >= 0, "privacy.noise_multiplier", z, "a number >= 0, or null")
    _check(target is None or target > 0, "privacy.target_epsilon", target, "> 0, or null")
    if not p.enabled:
        return
    _check(
        z is not None or target is not None,
        "privacy.noise_multiplier",
        z,
        "a number >= 0, or set privacy.target_epsilon to calibrate it",
    )
    why = "with privacy.enabled"
    _check(not cfg.centralized, "centralized", True, f"false {why} (client-level DP)")
    _check(
        not cfg.secagg.enabled or p.noise == "distributed",
        "privacy.noise",
        p.noise,
        "distributed with secagg.enabled (the server never sees an update to clip)",
    )
    _check(
        p.sampling == "poisson" or p.accountant == "rdp",
        "privacy.accountant",
        p.accountant,
        "rdp with privacy.sampling fixed (the PLD accountant takes Poisson sampling only)",
    )
    _check(
        p.noise == "central" or p.sampling == "fixed",
        "privacy.noise",
        p.noise,
        "central with Poisson sampling (a smaller cohort would add less noise than accounted); "
        "distributed needs privacy.sampling fixed",
    )
    q = p.target_quantile
    if q is not None:
        _check(0 < q < 1, "privacy.target_quantile", q, "a fraction in (0, 1), or null")
        _check(p.clip_lr > 0, "privacy.clip_lr", p.clip_lr, "a number > 0")
        _check(p.noise == "central", "privacy.noise", p.noise, "central with adaptive clipping")
        sigma = count_noise(cfg)
        _check(sigma > 0, "privacy.count_noise", p.count_noise, "a number > 0, or null")
        _check(
            z is None or z < 2 * sigma,
            "privacy.noise_multiplier",
            z,
            f"below 2 x count_noise = {2 * sigma:g} with adaptive clipping (the count "
            "takes that share of the budget); raise privacy.count_noise",
        )
    a = cfg.algorithm.name
    plain = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "ffa-lora")
    _check(a in plain, "algorithm.name", a, f"one of {', '.join(plain)} {why}")
    f = cfg.federation
    mun = f.max_update_norm
    _check(mun is None, "federation.max_update_norm", mun, f"null {why} (clipping bounds updates)")
    _check(
        f.short_round == "skip",
        "federation.short_round",
        f.short_round,
        f"skip {why} (a retry draws another cohort the accountant does not count)",
    )
    _check(
        not cfg.codec.feedback,
        "codec.error_feedback",
        cfg.codec.feedback,
        f"false {why} (a residual carries past updates past the clip)",
    )


def _validate_algorithm(cfg: Config) -> None:
    """The algorithm's options, and the method, optimizer and runtime it needs."""
    from fedpet.algorithms import get_algorithm

    a = cfg.algorithm
    slr = a.server_lr
    _check(slr is None or slr > 0, "algorithm.server_lr", slr, "a number > 0, or null")
    trim = a.trim_fraction
    _check(0 <= trim < 0.5, "algorithm.trim_fraction", trim, "a number in [0, 0.5)")
    _check(a.mu >= 0, "algorithm.mu", a.mu, "a number >= 0")
    for key in ("momentum", "beta1", "beta2"):
        _check(0 <= getattr(a, key) < 1, f"algorithm.{key}", getattr(a, key), "a number in [0, 1)")
    _check(a.tau > 0, "algorithm.tau", a.tau, "a number > 0")
    _check(a.fedrs is None or 0 <= a.fedrs <= 1, "algorithm.fedrs", a.fedrs, "in [0, 1] or null")
    if a.name == "scaffold":  # option II assumes K plain SGD steps at one rate
        t = cfg.train
        _check(t.optimizer == "sgd", "train.optimizer", t.optimizer, "sgd with algorithm scaffold")
        _check(t.schedule == "constant", "train.schedule", t.schedule, "constant with scaffold")
        _check(
            t.max_grad_norm is None,
            "train.max_grad_norm",
            t.max_grad_norm,
            "null with algorithm scaffold (option II's control update assumes unclipped "
            "gradients): --set train.max_grad_norm=null",
        )
    stateful = get_algorithm(a).stateful_clients
    if stateful or cfg.codec.feedback:
        what = f"algorithm {a.name}" if stateful else "error feedback"
        rt = cfg.runtime
        _check(
            rt == "simulation",
            "runtime",
            rt,
            f"simulation with {what} (each client's own state is kept on disk in the run "
            "directory; a Flower runtime does not carry it)",
        )
    m = cfg.method.name
    if a.name in ("ffa-lora", "hetlora", "flexlora"):
        _check(m == "lora", "method.name", m, f"lora with algorithm {a.name}")
    if a.ranks:
        _check(
            a.name in ("hetlora", "flexlora"),
            "algorithm.ranks",
            list(a.ranks),
            "empty unless algorithm is hetlora or flexlora",
        )
        _check(
            all(1 <= r <= cfg.method.r for r in a.ranks),
            "algorithm.ranks",
            list(a.ranks),
            f"ranks from 1 to method.r = {cfg.method.r} (the global rank)",
        )


def count_noise(cfg: Config) -> float:
    """Std of the noise on adaptive clipping's count: ``privacy.count_noise`` or m / 20."""
    p = cfg.privacy
    return p.count_noise if p.count_noise is not None else cfg.federation.clients_per_round / 20


def _validate_secagg(cfg: Config) -> None:
    """Secure aggregation's options, and what it rules out: the server never sees an update."""
    from fedpet.algorithms import get_algorithm

    s = cfg.secagg
    _check(s.clipping_range > 0, "secagg.clipping_range", s.clipping_range, "a number > 0")
    _check(0 < s.shares <= 1, "secagg.shares", s.shares, "a fraction of the cohort in (0, 1]")
    _check(0 < s.threshold <= 1, "secagg.threshold", s.threshold, "a fraction in (0, 1]")
    if not s.enabled:
        return
    flower = "a Flower runtime: --runtime flower-sim, or a deployment through flwr run"
    _check(cfg.runtime != "simulation", "runtime", cfg.runtime, f"with secagg.enabled, {flower}")
    _check(
        not get_algorithm(cfg.algorithm).keeps_updates
        and cfg.algorithm.name not in ("hetlora", "flexlora"),
        "algorithm.name",
        cfg.algorithm.name,
        "with secagg.enabled, an algorithm that sums the updates as sent (fedavg)",
    )
    mun = cfg.federation.max_update_norm
    _check(mun is None, "federation.max_update_norm", mun, "null with secagg.enabled")
    _check(cfg.codec.up == "fp32", "codec.up", cfg.codec.up, "fp32 with secagg.enabled")
    cpr = cfg.federation.clients_per_round
    _check(cpr >= 2, "federation.clients_per_round", cpr, "at least 2 with secagg.enabled")


def _validate_faults(cfg: Config) -> None:
    """Fault injection and the server's answer to it (deadline, minimum cohort, retries)."""
    f, x = cfg.federation, cfg.faults
    _check(f.round_timeout > 0, "federation.round_timeout", f.round_timeout, "seconds > 0")
    deadline = f.round_deadline
    _check(deadline is None or deadline > 0, "federation.round_deadline", deadline, "> 0 or null")
    _check(
        1 <= f.min_clients_per_round <= f.clients_per_round,
        "federation.min_clients_per_round",
        f.min_clients_per_round,
        f"an integer from 1 to federation.clients_per_round ({f.clients_per_round})",
    )
    _choice("federation.short_round", f.short_round, ("retry", "skip"))
    _check(f.max_retries >= 0, "federation.max_retries", f.max_retries, "an integer >= 0")
    for key in ("client_failure_rate", "straggler_rate"):
        rate = getattr(x, key)
        _check(0 <= rate <= 1, f"faults.{key}", rate, "a probability in [0, 1]")
    _check(x.straggler_slowdown >= 1, "faults.straggler_slowdown", x.straggler_slowdown, ">= 1")
    _check(x.step_seconds > 0, "faults.step_seconds", x.step_seconds, "a number > 0")
    bad = [k for k in x.malicious_clients if not 0 <= k < f.clients]
    _check(
        not bad,
        "faults.malicious_clients",
        list(x.malicious_clients),
        f"client indices from 0 to {f.clients - 1}",
    )
    _choice("faults.attack", x.attack, ("nan", "norm"))
    _check(x.attack_norm > 0, "faults.attack_norm", x.attack_norm, "a number > 0")
    if cfg.runtime == "simulation":
        return
    # on Flower, nodes fail on their own and run on real time
    flower = f"on runtime {cfg.runtime!r}"
    _check(f.short_round == "skip", "federation.short_round", f.short_round, f"skip {flower}")
    _check(
        deadline is None, "federation.round_deadline", deadline, f"null {flower}: use round_timeout"
    )
    injected = x.client_failure_rate or x.straggler_rate or x.malicious_clients
    _check(not injected, "runtime", cfg.runtime, "simulation when faults.* injects faults")


def resolve(cfg: Config) -> Config:
    """Fill in what the config leaves to fedpet.

    The method's default learning rate, and DP's noise multiplier for a target epsilon
    (calibrated for the planned rounds).
    """
    from fedpet.methods import METHODS

    if cfg.train.lr is None:
        train = dataclasses.replace(cfg.train, lr=METHODS[cfg.method.name].default_lr)
        cfg = dataclasses.replace(cfg, train=train)
    p, f = cfg.privacy, cfg.federation
    if p.enabled and p.target_epsilon is not None:
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
    return cfg
