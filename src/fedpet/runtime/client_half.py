"""The client's half of a round, the one entry point every runtime calls.

A client loads its own state from the store its runtime gives it, decodes what the server
sent, trains the shared model from it with the algorithm's hook (inside FedRS's restricted
softmax when ``algorithm.fedrs`` is set), turns the result into the algorithm's update and
its own new state, sends the update and its report through the stages' client halves (DP's
clip and noise share), encodes it (error feedback inside the codec), and saves its new
state. The simulation runtime calls :meth:`ClientHalf.run` in process; Flower's ClientApp
calls it from its train handler, in a secure round too, where the update is left to the
secure sum's masks instead of the codec.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fedpet.algorithms import Algorithm, ClientHook, get_algorithm
from fedpet.algorithms.fedrs import restricted
from fedpet.codecs import Codec, get_codec, upload_codec
from fedpet.devices import to_device
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import Draws, fresh
from fedpet.runtime.client_store import ClientStore, SavedState
from fedpet.runtime.payloads import ClientReply, Download
from fedpet.runtime.pipeline import stages_for
from fedpet.seeding import derive_seed
from fedpet.stages import Report, Side, Stage
from fedpet.state import TrainableState, pad

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

    def train(
        self,
        received: TrainableState,
        round_: int,
        client: int,
        saved: SavedState,
        wrap: Wrap | None = None,
    ) -> Trained:
        """Train ``client`` from its view ``received`` of the download and its saved state.

        Parts of the model outside the view (ranks above the client's LoRA rank) start and
        stay zero; received tensors the algorithm does not train this round stay as
        received and are left out of the update, and received base corrections are merged
        into the base weights. The algorithm's personal tensors start
        from the client's own, or from the method's initialisation the first time. ``wrap``
        wraps the hook (the simulation injects crashes with it). Ditto then trains the
        client's own copy.
        """
        exp, algorithm = self.exp, self.algorithm
        on_device = to_device(received, exp.device)
        hook = algorithm.client_hook(on_device, to_device(saved.algorithm, exp.device))
        hook = self.restrict(hook, client)
        if wrap is not None:
            hook = wrap(hook)
        exp.bases.set_(algorithm.bases(received, saved.algorithm))
        own = saved.personal or exp.personal  # the method's initialisation the first time
        local = algorithm.local_start(received, saved.algorithm)
        start = {n: own[n] if n in exp.personal else local[n] for n in exp.params}
        seed = derive_seed(exp.cfg.seed, "train", round_, client)
        fixed = frozenset(n for n in exp.params if not algorithm.trains(n, round_))
        trained = exp.train_client(client, pad(start, exp.params), hook, seed, fixed)
        shared = {n: t for n, t in trained.state.items() if n not in exp.personal}
        update, new_state = algorithm.client_update(
            received,
            algorithm.client_view(shared, client),
            saved.algorithm,
            trained.steps,
            exp.learning_rates,
            trained.num_examples,
        )
        update = {n: t for n, t in update.items() if n not in fixed}
        personal = {n: trained.state[n] for n in exp.personal}
        if algorithm.personal_copy:
            hook = self.restrict(algorithm.personal_training(on_device), client)
            seed = derive_seed(exp.cfg.seed, "personal", round_, client)
            copy = saved.personal or {name: received[name] for name in exp.params}
            personal = exp.train_client(client, copy, hook, seed).state
        loss, seen = trained.loss, trained.seen
        return Trained(update, trained.num_examples, loss, new_state, seen, personal)

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

        The client continues from the version of its state the download names. With
        ``secure`` the update is left unencoded for a secure sum to mask; ``tamper``
        replaces the trained update (the simulation's malicious clients).
        """
        saved = store.load(client, download.committed)
        if saved is None:
            logging.getLogger("fedpet").warning(
                "fedpet: client %d has no state from round %d here; it starts afresh",
                client,
                download.committed,
            )
        state = SavedState.of(saved or {})
        received = self.down.decode(download.payload, download.layout)
        trained = self.train(received, round_, client, state, wrap)
        update = trained.update if tamper is None else tamper(trained.update)
        report = Report(trained.num_examples, trained.loss, trained.seen)
        update, report = self.prepare(update, report, round_, client)
        payload, masked = b"", None
        if secure:
            masked = update
        else:
            payload = self.encode(update, round_, client, state.codec)
        codec = {} if secure else self.up.state_dict()
        kept = SavedState(trained.state, codec, trained.personal).flat()
        if kept:
            store.save(client, round_, kept)
        return ClientReply(payload, report, bool(kept), saved is None, masked)

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
