"""The client's half of a round, the one entry point every runtime calls.

A client loads its own state from the store its runtime gives it, decodes what the server
sent, trains the shared model from it with the algorithm's hook (inside FedRS's restricted
softmax when ``algorithm.fedrs`` is set), turns the result into the algorithm's update and
its own new state, sends the update and its report through the stages' client halves (DP's
clip and noise share), encodes it (error feedback inside the codec), and saves its new
state. The simulation runtime calls :meth:`ClientHalf.run` in process; Flower's ClientApp
calls it from its train handler, in a secure round too, where the update is left to the
secure sum's masks instead of the codec. :meth:`ClientHalf.run_cohort` does the same for
several clients whose local training runs together (:mod:`fedpet.cohort`): each client's
round is opened (:meth:`ClientHalf.open`) and closed (:meth:`ClientHalf.close`) on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedpet.algorithms import Algorithm, ClientHook, get_algorithm
from fedpet.algorithms.fedrs import restricted
from fedpet.client import TrainResult
from fedpet.codecs import Codec, get_codec, upload_codec
from fedpet.cohort import Job
from fedpet.devices import to_device
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import Draws, fresh
from fedpet.runtime.client_store import ClientStore, SavedState
from fedpet.runtime.payloads import ClientReply, Download
from fedpet.runtime.pipeline import stages_for
from fedpet.seeding import derive_seed
from fedpet.stages import Report, Side, Stage
from fedpet.state import TrainableState, pad, same_state

Wrap = Callable[[ClientHook], ClientHook]
Tamper = Callable[[TrainableState], TrainableState]


@dataclass(frozen=True)
class Trained:
    """A client's local training: its update, weight, mean loss and new states.

    ``seen`` is the examples its steps trained on, every epoch's; ``state`` is the
    algorithm's new client state and ``personal`` the client's own tensors (never sent).
    """

    update: TrainableState
    num_examples: int
    loss: float
    state: TrainableState
    seen: int
    personal: TrainableState


@dataclass(frozen=True)
class Opened:
    """A client's round up to its local training (:meth:`ClientHalf.open`).

    ``job`` is what it trains from and with; ``fixed`` the tensors it holds fixed this
    round; ``bases`` the base corrections its model trains on; ``fresh`` that it had no
    saved state.
    """

    client: int
    round_: int
    received: TrainableState
    saved: SavedState
    fresh: bool
    job: Job
    fixed: frozenset[str]
    bases: TrainableState


Entry = tuple[Download, int, "Wrap | None", "Tamper | None"]
"""A client of a cohort: its download, its id, and the wrap and tamper :meth:`run` takes."""


@dataclass
class ClientHalf:
    """Local training, the algorithm's client update, the stages' client halves, the codec."""

    exp: Experiment
    algorithm: Algorithm
    stages: list[Stage]
    up: Codec
    down: Codec

    @classmethod
    def of(cls, exp: Experiment, draws: Draws | None = None) -> ClientHalf:
        """The client half of ``exp``'s config.

        ``draws`` is the client's DP randomness (see :mod:`fedpet.privacy.randomness`):
        by default a new secret of this process (the run seed where DP is reproducible).
        """
        cfg = exp.cfg
        return cls(
            exp,
            get_algorithm(cfg.algorithm),
            stages_for(cfg, draws or fresh(cfg)),
            upload_codec(cfg),
            get_codec(cfg.codec.down),
        )

    def open(
        self,
        download: Download,
        round_: int,
        client: int,
        store: ClientStore,
        wrap: Wrap | None = None,
    ) -> Opened:
        """``client``'s round up to its local training, from ``download`` and its saved state.

        The client continues from the version of its state the download names (see
        :meth:`begin`).
        """
        saved = store.load(client, download.committed)
        if saved is None:
            logging.getLogger("fedpet").warning(
                "fedpet: client %d has no state from round %d here; it starts afresh",
                client,
                download.committed,
            )
        received = self.down.decode(download.payload, download.layout)
        return self.begin(received, round_, client, SavedState.of(saved or {}), wrap, saved is None)

    def begin(
        self,
        received: TrainableState,
        round_: int,
        client: int,
        saved: SavedState,
        wrap: Wrap | None = None,
        fresh: bool = False,
    ) -> Opened:
        """``client``'s round up to its local training, from its view ``received`` and state.

        Parts of the model outside the view (ranks above the client's LoRA rank) start and
        stay zero; received tensors the algorithm does not train this round stay as
        received and are left out of the update, and received base corrections are merged
        into the base weights. The algorithm's personal tensors start from the client's own,
        or from the method's initialisation the first time. ``wrap`` wraps the hook (the
        simulation injects crashes with it); ``fresh`` says the client had no saved state.
        """
        exp, algorithm = self.exp, self.algorithm
        on_device = to_device(received, exp.device)
        hook = algorithm.client_hook(on_device, to_device(saved.algorithm, exp.device))
        hook = self.restrict(hook, client)
        if wrap is not None:
            hook = wrap(hook)
        own = saved.personal or exp.personal  # the method's initialisation the first time
        local = algorithm.local_start(received, saved.algorithm)
        start = {n: own[n] if n in exp.personal else local[n] for n in exp.params}
        job = Job(
            exp.clients[client],
            pad(start, exp.params),
            hook,
            derive_seed(exp.cfg.seed, "train", round_, client),
        )
        fixed = frozenset(n for n in exp.params if not algorithm.trains(n, round_))
        bases = algorithm.bases(received, saved.algorithm)
        return Opened(client, round_, received, saved, fresh, job, fixed, bases)

    def train(
        self,
        received: TrainableState,
        round_: int,
        client: int,
        saved: SavedState,
        wrap: Wrap | None = None,
    ) -> Trained:
        """Train ``client`` alone from its view ``received`` and its saved state (:meth:`begin`)."""
        return self.alone(self.begin(received, round_, client, saved, wrap))

    def alone(self, opened: Opened) -> Trained:
        """``opened``'s local training on the shared model, one client at a time."""
        self.exp.bases.set_(opened.bases)
        job = opened.job
        client, fixed = opened.client, opened.fixed
        result = self.exp.train_client(client, job.start, job.hook, job.seed, fixed)
        return self.trained(opened, result)

    def trained(self, opened: Opened, result: TrainResult) -> Trained:
        """The algorithm's update and new states from ``opened``'s local training ``result``.

        Ditto then trains the client's own copy.
        """
        exp, algorithm, client = self.exp, self.algorithm, opened.client
        shared = {n: t for n, t in result.state.items() if n not in exp.personal}
        update, new_state = algorithm.client_update(
            opened.received,
            algorithm.client_view(shared, client),
            opened.saved.algorithm,
            result.steps,
            exp.learning_rates,
            result.num_examples,
        )
        update = {n: t for n, t in update.items() if n not in opened.fixed}
        personal = {n: result.state[n] for n in exp.personal}
        if algorithm.personal_copy:
            on_device = to_device(opened.received, exp.device)
            hook = self.restrict(algorithm.personal_training(on_device), client)
            seed = derive_seed(exp.cfg.seed, "personal", opened.round_, client)
            copy = opened.saved.personal or {name: opened.received[name] for name in exp.params}
            personal = exp.train_client(client, copy, hook, seed).state
        loss, seen = result.loss, result.seen
        return Trained(update, result.num_examples, loss, new_state, seen, personal)

    def restrict(self, hook: ClientHook, client: int) -> ClientHook:
        """``hook`` inside FedRS's restricted softmax where ``algorithm.fedrs`` asks."""
        exp = self.exp
        labels = exp.train.labels[exp.clients[client]]
        return restricted(hook, exp.cfg.algorithm.fedrs, exp.task.num_labels, labels)

    def run(
        self,
        download: Download,
        round_: int,
        client: int,
        store: ClientStore,
        secure: bool = False,
        wrap: Wrap | None = None,
        tamper: Tamper | None = None,
    ) -> ClientReply:
        """One client's round: its reply to ``download``; its new state goes to ``store``.

        With ``secure`` the update is left unencoded for a secure sum to mask; ``tamper``
        replaces the trained update (the simulation's malicious clients).
        """
        opened = self.open(download, round_, client, store, wrap)
        return self.close(opened, self.alone(opened), store, secure, tamper)

    def run_cohort(
        self,
        round_: int,
        store: ClientStore,
        entries: Sequence[Entry],
        failures: tuple[type[Exception], ...] = (),
    ) -> list[ClientReply | Exception]:
        """The rounds of several clients trained together (:mod:`fedpet.cohort`).

        Each entry is (download, client, wrap, tamper) as :meth:`run` takes them; each
        client's reply, or the exception in ``failures`` its local training raised. The
        clients share the base model, so their base corrections must be the same.
        """
        opened = [self.open(d, round_, k, store, wrap) for d, k, wrap, _ in entries]
        first = opened[0]
        if any(not same_state(o.bases, first.bases) for o in opened[1:]):
            raise ValueError("clients trained together must share their base corrections")
        self.exp.bases.set_(first.bases)
        results = self.exp.train_cohort([o.job for o in opened], first.fixed, failures)
        replies: list[ClientReply | Exception] = []
        for o, result, (*_, tamper) in zip(opened, results, entries, strict=True):
            if isinstance(result, Exception):
                replies.append(result)
            else:
                replies.append(self.close(o, self.trained(o, result), store, False, tamper))
        return replies

    def close(
        self,
        opened: Opened,
        trained: Trained,
        store: ClientStore,
        secure: bool = False,
        tamper: Tamper | None = None,
    ) -> ClientReply:
        """The reply of ``opened``'s client from its ``trained`` round; its state is saved."""
        round_, client = opened.round_, opened.client
        update = trained.update if tamper is None else tamper(trained.update)
        report = Report(trained.num_examples, trained.loss, trained.seen)
        update, report = self.prepare(update, report, round_, client)
        payload, masked = b"", None
        if secure:
            masked = update
        else:
            payload = self.encode(update, round_, client, opened.saved.codec)
        codec = {} if secure else self.up.state_dict()
        kept = SavedState(trained.state, codec, trained.personal).flat()
        if kept:
            store.save(client, round_, kept)
        return ClientReply(payload, report, bool(kept), opened.fresh, masked)

    def prepare(
        self, update: TrainableState, report: Report, round_: int, client: int
    ) -> tuple[TrainableState, Report]:
        """The update and report through every stage's client half, in order."""
        side = Side(round_, client)
        for stage in self.stages:
            update, report = stage.client(update, report, side)
        return update, report

    def encode(
        self, update: TrainableState, round_: int, client: int, codec_state: TrainableState
    ) -> bytes:
        """The payload of ``update``; the codec continues from the client's ``codec_state``."""
        self.up.load_state_dict(codec_state)
        return self.up.encode(update, derive_seed(self.exp.cfg.seed, "codec-up", round_, client))
