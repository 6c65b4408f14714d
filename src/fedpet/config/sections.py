"""The run configuration: frozen dataclasses, one per section of ``config.yaml``.

Each field is declared once with :func:`~fedpet.config.fields.option`: its default, its
help text and the values it allows. ``method`` and ``algorithm`` hold the options every
method or algorithm takes; each method and algorithm extends them with its own
(:class:`MethodOptions`, :class:`AlgorithmOptions`), and the parser picks the class by the
section's ``name``. Nothing here imports the rest of fedpet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fedpet.config.fields import Rule, above, at_least, each, one_of, option, or_null, within

DEFAULT_MODEL = "all-MiniLM-L6-v2"

RUNTIMES = ("simulation", "flower-sim", "flower")
"""In process; Flower's simulation engine; a Flower deployment, started with ``flwr run``."""

SEED = within(0, 2**32 - 1, "an integer from 0 to 2**32 - 1")
POSITIVE_INT = at_least(1)
PROBABILITY = within(0, 1, "a probability in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    """Which task, how it is tokenized, subsampled and partitioned across clients."""

    task: str = option(
        "rotten_tomatoes",
        "the task: a packaged one, a GLUE one, or file:PATH (a CSV, TSV, JSONL or Parquet "
        "file of yours)",
    )
    text_column: str = option("text", "the text column of a file:PATH task")
    text_pair_column: str | None = option(None, "a second text column (sentence pairs)")
    label_column: str = option("label", "the label column of a file:PATH task")
    client_column: str | None = option(None, "the column naming each row's client (natural)")
    objective: str = option(
        "classify",
        "classify (a head on the pooled states) or generate (a causal LM writes the response; "
        "packaged tasks answer with their label words, file:PATH tasks with their response "
        "column)",
        one_of("classify", "generate"),
    )
    instruction_column: str = option(
        "instruction", "the instruction column of a generative file:PATH task"
    )
    input_column: str | None = option(
        "input", "the input column of a generative file:PATH task (null: none; may be absent)"
    )
    response_column: str = option(
        "response", "the response column of a generative file:PATH task (Alpaca: output)"
    )
    options: tuple[str, ...] | None = option(
        None,
        "the closed answer set of a generative file:PATH task: scored by each option's "
        "log-likelihood and by exact match (null: open answers, scored by token accuracy)",
    )
    validation_file: str | None = option(None, "validation rows of a file:PATH task")
    test_file: str | None = option(None, "test rows of a file:PATH task")
    data_dir: str | None = option(None, "the directory holding the GLUE files (SST-2/...)")
    max_length: int = option(64, "tokens per example; batches pad to their longest", at_least(8))
    max_train_samples: int | None = option(
        None, "a seeded, stratified subsample of train", or_null(POSITIVE_INT)
    )
    max_eval_samples: int | None = option(
        None, "stratified subsets of validation and test", or_null(POSITIVE_INT)
    )
    train_fraction: float | None = option(
        None,
        "a seeded, stratified share of train",
        or_null(within(0, 1, "a number in (0, 1]", low_open=True)),
    )
    split_seed: int = option(0, "seed of the split of a task without one", SEED)
    partition: str = option(
        "dirichlet",
        "how train is split across clients: dirichlet (equal sizes, label mix ~ Dir(alpha x "
        "prior)), iid, dirichlet-classwise (each label split by Dir(alpha): unequal sizes), "
        "quantity (sizes ~ Dir(alpha), iid labels), shards (data.labels_per_client labels "
        "each), natural (the clients data.client_column names)",
    )
    alpha: float = option(
        1.0,
        "Dirichlet concentration of the partition (smaller = stronger skew)",
        Rule(lambda v: v > 0, "a number > 0 (smaller = stronger label skew)"),
    )
    min_client_size: int = option(1, "fewest examples any client may hold", POSITIVE_INT)
    labels_per_client: int = option(
        2,
        "labels each client holds under shards",
        Rule(lambda v: v >= 1, "an integer >= 1 (at most the labels)"),
    )
    client_test_fraction: float = option(
        0.0,
        "the share of each client's examples held out as its own test split, never trained "
        "on (0: off); the run then evaluates every client (clients.csv)",
        within(0, 1, "a number in [0, 1)", high_open=True),
    )


@dataclass(frozen=True)
class MethodOptions:
    """The PETuning method; each method's own options extend these."""

    name: str = option("lora", "the PETuning method")


@dataclass(frozen=True)
class TrainConfig:
    """Local (client) training, and centralized training for ``--centralized``."""

    local_epochs: int = option(1, "epochs over a client's data per round", POSITIVE_INT)
    batch_size: int = option(16, "examples per local step", POSITIVE_INT)
    lr: float | None = option(
        None,
        "learning rate of the method's parameters (null: the method's default)",
        or_null(above(0), "or null for the method's"),
    )
    head_lr: float = option(3e-2, "learning rate of the classification head", above(0))
    optimizer: str = option("adamw", "local optimizer", one_of("adamw", "sgd"))
    weight_decay: float = option(0.0, "weight decay", at_least(0, "a number"))
    schedule: str = option(
        "constant", "learning-rate schedule over local steps", one_of("constant", "linear")
    )
    precision: str = option(
        "fp32",
        "training and evaluation precision: fp32, or bf16 or fp16 autocast (fp32 master "
        "weights); fp16 (with gradient scaling) needs a CUDA device",
        one_of("fp32", "bf16", "fp16"),
    )
    max_grad_norm: float | None = option(
        1.0, "gradient clipping norm (null: none)", or_null(above(0), "or null for none")
    )
    group_by_length: bool = option(
        True, "local batches of similar length (seeded shuffled groups): less padding"
    )
    dropout: float | None = option(
        None,
        "overrides the model's dropout (0 disables; null: the model's)",
        or_null(within(0, 1, "a number in [0, 1)", high_open=True)),
    )
    max_steps: int | None = option(
        None,
        "local steps per round (or of centralized training) at most, as FlowerTune's "
        "max-steps (null: every batch of the epochs)",
        or_null(POSITIVE_INT),
    )
    epochs: int = option(1, "epochs of centralized training", POSITIVE_INT)
    gradient_checkpointing: bool = option(
        False, "recompute the backbone's activations in the backward pass: less memory"
    )
    eval_batch_size: int = option(128, "examples per evaluation batch", POSITIVE_INT)


@dataclass(frozen=True)
class FederationConfig:
    """Clients, participation and rounds.

    ``clients_per_round`` left unset means 10, or every client when there are fewer.
    """

    clients: int = option(100, "number of clients", POSITIVE_INT)
    clients_per_round: int = option(10, "clients sampled each round", POSITIVE_INT)
    rounds: int = option(10, "federated rounds", POSITIVE_INT)
    eval_every: int = option(
        2, "evaluate on validation every this many rounds (and after the last)", POSITIVE_INT
    )
    max_update_norm: float | None = option(
        None, "reject client updates with a larger L2 norm", or_null(above(0))
    )
    round_timeout: float = option(
        600.0, "seconds a Flower server waits for a round's replies", above(0, "seconds")
    )
    round_deadline: float | None = option(
        None, "simulated seconds the server waits for a client", or_null(above(0))
    )
    min_clients_per_round: int = option(
        1, "fewer aggregated updates skip (or retry) the round", POSITIVE_INT
    )
    short_round: str = option("skip", "what a short round does", one_of("retry", "skip"))
    max_retries: int = option(2, "retries of a short round", at_least(0))
    max_round_mb: float | None = option(
        None,
        "refuse a run whose rounds would send more than this many MB (up and down, every "
        "sampled client; null: no budget)",
        or_null(above(0, "MB")),
    )
    parallel_clients: str = option(
        "1",
        "clients of a round trained together on the shared frozen model, in one batched "
        "pass (the simulation runtime; 1: one after another; auto: the most that fit the "
        "GPU's memory, or what a short probe measures fastest on the CPU)",
        Rule(
            lambda v: v == "auto" or (v.isdigit() and int(v) >= 1),
            "a whole number >= 1, or auto",
        ),
    )
    pass_cost: str = option(
        "auto",
        "with parallel_clients above 1: what one batched pass costs beyond its tokens, in "
        "tokens; each local step's clients are grouped by batch width into the passes that "
        "cost least (passes x pass_cost + the tokens of their padded batches). 0: a pass per "
        "width, no client padded beyond its own batch; auto: measured when the run starts",
        Rule(lambda v: v == "auto" or v.isdigit(), "a whole number >= 0, or auto"),
    )


@dataclass(frozen=True)
class FaultConfig:
    """Client misbehaviour injected by the simulation runtime, to test a setup's robustness.

    Every draw derives from (seed, round, attempt, client), so faults repeat exactly.
    """

    client_failure_rate: float = option(
        0.0, "chance a sampled client crashes mid-training", PROBABILITY
    )
    straggler_rate: float = option(0.0, "chance a sampled client is slower", PROBABILITY)
    straggler_slowdown: float = option(
        10.0, "how many times slower a straggler is", at_least(1, "a number")
    )
    step_seconds: float = option(1.0, "simulated seconds per local step", above(0))
    malicious_clients: tuple[int, ...] = option(
        (), "clients that send harmful updates", each(at_least(0))
    )
    attack: str = option("nan", "what a malicious client sends", one_of("nan", "norm"))
    attack_norm: float = option(1e6, "L2 norm of a norm attack", above(0))


@dataclass(frozen=True)
class AlgorithmOptions:
    """The FL algorithm and the options every algorithm takes; each extends them."""

    name: str = option("fedavg", "the FL algorithm (client hooks + server update)")
    server_lr: float | None = option(
        None,
        "server learning rate (null: the algorithm's default, 1 or 1e-2 for the adaptive ones)",
        or_null(above(0)),
    )
    fedrs: float | None = option(
        None,
        "FedRS: scale the logits of the classes a client lacks by this factor in its "
        "local training (null: off)",
        or_null(within(0, 1, "a number in [0, 1]")),
    )


@dataclass(frozen=True)
class CodecConfig:
    """How states and updates are encoded on the wire, per direction (``fedpet.codecs``).

    ``error_feedback``: each client adds what its previous uploads lost to the next one (its
    residual kept on disk); null turns it on for top-k uploads only.
    """

    up: str = option("fp32", "upload codec: fp32, fp16, bf16, int8[:row][:sr], topk:F[+int8]")
    down: str = option("fp32", "download codec, as codec.up")
    error_feedback: bool | None = option(
        None, "clients carry what their uploads lost into the next (null: on for top-k)"
    )

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
    split across the clients (``distributed``). Cohorts are drawn by ``sampling``. With
    ``target_quantile`` the clip adapts (Andrew et al., 2021).
    """

    enabled: bool = option(False, "client-level differential privacy (DP-FedAvg)")
    clip: float = option(1.0, "L2 clip of each client's update", above(0, "an L2 norm bound"))
    target_quantile: float | None = option(
        None,
        "adaptive clipping: the quantile of update norms the clip follows",
        or_null(within(0, 1, "a fraction in (0, 1)", low_open=True, high_open=True)),
    )
    clip_lr: float = option(0.2, "adaptive clipping's geometric step", above(0))
    count_noise: float | None = option(
        None,
        "std of the noise on adaptive clipping's count (null: clients_per_round / 20)",
        or_null(above(0)),
    )
    noise_multiplier: float | None = option(
        None, "the noise multiplier z (std z x clip on the sum)", or_null(at_least(0, "a number"))
    )
    target_epsilon: float | None = option(
        None,
        "calibrate z to spend this epsilon over the planned rounds",
        Rule(lambda v: v is None or v > 0, "> 0, or null"),
    )
    delta: float = option(
        1e-5, "delta of the reported epsilon", within(0, 1, "a number in (0, 1)", True, True)
    )
    noise: str = option(
        "central", "who adds the noise: the server or each client", one_of("central", "distributed")
    )
    sampling: str = option("poisson", "how a round's cohort is drawn", one_of("poisson", "fixed"))
    accountant: str = option("rdp", "the privacy accountant", one_of("rdp", "pld"))
    reproducible: bool = option(
        False,
        "draw DP's noise and cohorts from the run seed: reproducible, NOT private (anyone "
        "with config.yaml can undo the noise and knows the cohorts); false: from secrets",
    )


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation with Flower's SecAgg+: the server learns only the cohort's sum.

    Each client scales its update by its example count, clips every value to
    ``[-clipping_range, clipping_range]`` and quantizes it to 2**22 levels before masking.
    """

    enabled: bool = option(False, "Flower's SecAgg+: the server sees only the sum")
    clipping_range: float = option(8.0, "values are clipped to +-this before masking", above(0))
    shares: float = option(
        1.0,
        "fraction of the cohort each client shares its mask secrets with",
        within(0, 1, "a fraction of the cohort in (0, 1]", low_open=True),
    )
    threshold: float = option(
        0.5,
        "fraction of those shares needed to unmask a client that dropped out",
        within(0, 1, "a fraction in (0, 1]", low_open=True),
    )


@dataclass(frozen=True)
class Config:
    """A whole run; ``config.yaml`` in a run directory is this, resolved."""

    seed: int = option(0, "seed of every random choice", SEED)
    model: str = option(
        DEFAULT_MODEL, "the packaged all-MiniLM-L6-v2, a local model directory or a hub id"
    )
    quantization: str = option(
        "none",
        "load the frozen base weights quantized (QLoRA): 4bit or 8bit need bitsandbytes and a "
        "CUDA device (pip install fedpet[qlora])",
        one_of("none", "4bit", "8bit"),
    )
    pooling: str = option(
        "auto",
        "how the head pools the backbone's states: auto (the model's sentence pooling; the "
        "last real token for a decoder), mean, cls or last",
        one_of("auto", "mean", "cls", "last"),
    )
    normalize_embeddings: bool = option(False, "L2-normalize the pooled vector (pooling set)")
    centralized: bool = option(False, "train on the union of the clients' data instead")
    runtime: str = option("simulation", "where the federation runs", one_of(*RUNTIMES))
    device: str = option(
        "auto",
        "where the model trains and evaluates: auto (CUDA when present, else the CPU), cpu, "
        "cuda, cuda:N or mps",
        Rule(
            lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
            "auto, cpu, cuda, cuda:N or mps",
        ),
    )
    out: str | None = option(
        None,
        "the run directory (null: runs/<task>-<method>-<time>; fedpet partition: "
        "runs/<task>-<partition>-partition-<time>; a file:PATH task is named by its file)",
    )
    filled: tuple[str, ...] = option(
        (),
        "the fields fedpet filled in (train.lr from the method, device from auto, DP's noise "
        "from a target epsilon); a run's config.yaml given as --config has them filled afresh",
    )
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodOptions = field(default_factory=MethodOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    algorithm: AlgorithmOptions = field(default_factory=AlgorithmOptions)
    codec: CodecConfig = field(default_factory=CodecConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
