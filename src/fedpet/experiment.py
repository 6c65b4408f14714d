"""Everything a process loads once for a run: task data, partition, tokenized splits, the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedpet.algorithms import get_algorithm
from fedpet.algorithms.base import ClientHook, PlainTraining
from fedpet.client import LocalTraining, TrainResult, batch_loss
from fedpet.cohort import Job, pass_cost, train_cohort
from fedpet.config import Config, FederationConfig, TrainConfig
from fedpet.data.batching import Encoded, collate, encode
from fedpet.data.checks import check_skew
from fedpet.data.partition import PartitionSpec, hold_out, partition
from fedpet.data.splits import Split, Task, check_labels, stratified_subsample
from fedpet.data.tasks import load_task
from fedpet.devices import resolve_device
from fedpet.generative.lm import CausalLM
from fedpet.generative.prompts import encode_generative
from fedpet.methods import METHODS
from fedpet.methods.lora import BaseWeights, corrections, merges_base
from fedpet.model import Backbones, TextClassifier, build_model, head_parameter_names
from fedpet.seeding import derive_seed
from fedpet.state import TrainableState, extract, load_, trainable_parameters


@dataclass
class Experiment:
    """The loaded pieces of a run, shared by every simulated client.

    Attributes
    ----------
    params
        The cached map of trainable parameters; switching client copies into these.
    clients
        Per client, indices into ``train`` of the examples it trains on.
    client_tests
        Per client, indices into ``train`` of its local test split (none without
        ``data.client_test_fraction``).
    personal
        The initial values of the trainable tensors the algorithm keeps with each client
        (never sent): where a client starts them the first time it is sampled.
    device
        Where the model (and so training and evaluation) lives.
    bases
        The adapted modules' base weights, which a global state's corrections set.
    """

    cfg: Config
    task: Task
    train: Encoded
    validation: Encoded
    test: Encoded
    clients: list[np.ndarray]
    model: TextClassifier | CausalLM
    params: dict[str, nn.Parameter]
    head_names: set[str]
    device: torch.device
    client_tests: list[np.ndarray] = dataclasses.field(default_factory=list)
    personal: TrainableState = dataclasses.field(default_factory=dict)
    bases: BaseWeights = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.bases = BaseWeights(self.model)

    def load_state(self, state: TrainableState) -> None:
        """Switch the shared model to a global state.

        Its trainable tensors are copied in place, and the base corrections it holds
        (:mod:`fedpet.methods.lora`'s ``@merged`` tensors) set the base weights; the other
        tensors it holds for merging (FLoRA's stacks) are the clients' to merge.
        """
        load_(self.params, {n: t for n, t in state.items() if not merges_base(n)})
        self.bases.set_(corrections(state))

    @property
    def trainable_params(self) -> int:
        """Number of trainable scalars (what FedAvg exchanges)."""
        return sum(p.numel() for p in self.params.values())

    @property
    def total_params(self) -> int:
        """Number of scalars in the whole model."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def learning_rates(self) -> dict[str, float]:
        """Each trainable tensor's learning rate: the head's, or the method's."""
        train = self.cfg.train
        assert train.lr is not None, "resolve the config first"
        return {n: train.head_lr if n in self.head_names else train.lr for n in self.params}

    def train_client(
        self,
        client: int,
        start: TrainableState,
        hook: ClientHook,
        seed: int,
        fixed: frozenset[str] = frozenset(),
    ) -> TrainResult:
        """Switch the shared model to ``start`` (in place) and train ``client`` on its data.

        The parameters in ``fixed`` stay at ``start`` (no gradient, no optimizer step); the
        result's state holds every parameter, fixed ones included.
        """
        load_(self.params, start)
        trained = {n: p for n, p in self.params.items() if n not in fixed}
        for name in fixed:
            self.params[name].requires_grad_(False)
        try:
            result = LocalTraining(
                self.model,
                trained,
                self.head_names,
                self.train,
                self.clients[client],
                self.cfg.train,
                hook,
                seed,
                self.cfg.train.local_epochs,
            ).run()
        finally:
            for name in fixed:
                self.params[name].requires_grad_(True)
        return dataclasses.replace(result, state=extract(self.params)) if fixed else result

    def train_cohort(
        self,
        jobs: Sequence[Job],
        fixed: frozenset[str] = frozenset(),
        failures: tuple[type[Exception], ...] = (),
        train: TrainConfig | None = None,
    ) -> list[TrainResult | Exception]:
        """Train ``jobs`` together on the shared model (:func:`fedpet.cohort.train_cohort`).

        Each ends as :meth:`train_client` would have ended it, or with the exception in
        ``failures`` its hook raised. The shared model's trainable parameters are untouched.
        ``train`` replaces the run's training options (a probe's fewer steps).
        """
        return train_cohort(
            self.model,
            list(self.params),
            self.head_names,
            self.train,
            jobs,
            train or self.cfg.train,
            fixed,
            failures,
            pass_cost(self.cfg),
        )


def subsample(task: Task, cfg: Config) -> Task:
    """Cut the splits to stratified subsets for data-scale studies and quick runs.

    ``train_fraction`` and ``max_train_samples`` of train (the smaller, where both are set)
    are drawn with the run seed; ``max_eval_samples`` of validation and of test with the
    split seed, so runs with different seeds are evaluated on the same examples.
    """
    train_rng = np.random.default_rng(derive_seed(cfg.seed, "subsample"))
    eval_rng = np.random.default_rng(cfg.data.split_seed)

    def cut(split: Split, n: int | None, rng: np.random.Generator) -> Split:
        return split if n is None else split.subset(stratified_subsample(split.labels, n, rng))

    d = cfg.data
    sizes = [d.max_train_samples]
    if d.train_fraction is not None:
        sizes.append(max(1, round(d.train_fraction * len(task.train))))
    n_train = min((n for n in sizes if n is not None), default=None)
    n_eval = d.max_eval_samples
    return dataclasses.replace(
        task,
        train=cut(task.train, n_train, train_rng),
        validation=cut(task.validation, n_eval, eval_rng),
        test=cut(task.test, n_eval, eval_rng),
    )


def load_data(cfg: Config) -> tuple[Task, list[np.ndarray], list[np.ndarray]]:
    """Load and subsample the task, and partition its training examples across clients.

    Centralized training is a single client holding every training example. Splits of a
    single label are refused (:func:`~fedpet.data.splits.check_labels`). Returns the task,
    each client's training indices and each client's local test indices (none unless
    ``data.client_test_fraction`` holds some out: :func:`~fedpet.data.partition.hold_out`).
    """
    task = subsample(load_task(cfg.data), cfg)
    check_labels(task)
    if cfg.centralized:
        clients = [np.arange(len(task.train))]
    else:
        d = cfg.data
        check_skew(task, d.partition)
        spec = PartitionSpec(
            num_clients=cfg.federation.clients,
            alpha=d.alpha,
            min_size=d.min_client_size,
            labels_per_client=d.labels_per_client,
            seed=derive_seed(cfg.seed, "partition"),
            groups=task.train.groups,
        )
        clients = partition(task.train.labels, d.partition, spec)
    fraction = cfg.data.client_test_fraction
    if not fraction:
        return task, clients, []
    return task, *hold_out(clients, fraction, derive_seed(cfg.seed, "client-test"))


INIT_EXAMPLES = 64
"""Validation examples a method's data-derived initialisation sees (LoRA-SB's gradient)."""


def initialise_method(cfg: Config, model: nn.Module, validation: Encoded) -> None:
    """Let the method set what it derives from data, from the first validation examples.

    The sample is the server's and the same in every process (the validation split is cut
    with the split seed); the loss is taken in eval mode where the model is (the CPU, before
    it moves), so every process derives the same values.
    """
    sample = np.arange(min(len(validation), INIT_EXAMPLES))
    was_training = model.training
    model.eval()
    try:
        METHODS[cfg.method.name].initialise(
            model,
            lambda: batch_loss(model, collate(validation, sample), PlainTraining()),
            cfg.method,
        )
    finally:
        model.train(was_training)


def initialise_from_task(cfg: Config, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """:func:`initialise_method` for a classifier built outside :func:`prepare` (an export's).

    Only where the method derives values from data: it loads the task's validation split.
    """
    if METHODS[cfg.method.name].from_data:
        validation = subsample(load_task(cfg.data), cfg).validation
        initialise_method(cfg, model, encode(tokenizer, validation, cfg.data.max_length))


def with_data_clients(cfg: Config, clients: int) -> Config:
    """``cfg`` with as many clients as the data names (the natural partition).

    No more clients take part in a round than there are.
    """
    fed = cfg.federation
    per_round = min(fed.clients_per_round, clients)
    federation = dataclasses.replace(fed, clients=clients, clients_per_round=per_round)
    return with_federation(cfg, federation, "clients")


def with_federation(cfg: Config, federation: FederationConfig, field: str) -> Config:
    """``cfg`` with ``federation``, whose ``field`` fedpet filled (recorded in ``filled``)."""
    filled = tuple(dict.fromkeys((*cfg.filled, f"federation.{field}")))
    return dataclasses.replace(cfg, federation=federation, filled=filled)


def prepare(
    cfg: Config, backbones: Backbones | None = None, attention: str | None = None
) -> Experiment:
    """Load the data (:func:`load_data`), build the model, tokenize every split once.

    The model goes to ``cfg.device``; ``attention`` is passed to
    :func:`~fedpet.model.build_model`.
    """
    task, clients, tests = load_data(cfg)
    if not cfg.centralized and cfg.data.partition == "natural":
        cfg = with_data_clients(cfg, len(clients))
    device = torch.device(resolve_device(cfg.device))
    model, tokenizer = build_model(cfg, task.num_labels, backbones, attention)

    def tokens(split: Split) -> Encoded:
        if task.generative:
            return encode_generative(tokenizer, split, cfg.data.max_length, task.options)
        return encode(tokenizer, split, cfg.data.max_length)

    validation = tokens(task.validation)
    if METHODS[cfg.method.name].from_data:
        initialise_method(cfg, model, validation)
    model.to(device)
    algorithm = get_algorithm(cfg.algorithm)
    params = {}
    for name, param in trainable_parameters(model).items():
        if algorithm.trainable(name):
            params[name] = param
        else:  # frozen by the algorithm (FFA-LoRA's A): neither trained nor sent
            param.requires_grad_(False)
    heads = head_parameter_names(model)
    personal = {
        n: p.detach().cpu().clone() for n, p in params.items() if algorithm.personal(n, n in heads)
    }
    return Experiment(
        cfg=cfg,
        task=task,
        train=tokens(task.train),
        validation=validation,
        test=tokens(task.test),
        clients=clients,
        model=model,
        params=params,
        head_names=heads,
        device=device,
        client_tests=tests,
        personal=personal,
    )
