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
from fedpet.runtime.client_store import ClientStore
from fedpet.runtime.payloads import ClientReply, Download
from fedpet.runtime.pipeline import stages_for
from fedpet.seeding import derive_seed
from fedpet.stages import Report, Side, Stage
from fedpet.state import TrainableState, pad

Wrap = Callable[[ClientHook], ClientHook]
Tamper = Callable[[TrainableState], TrainableState]

CODEC_STATE = "residual"
"""The prefix of the upload codec's tensors (error feedback's residual) in a saved state."""


@dataclass(frozen=True)
class Trained:
    """A client's local training: its update, weight, mean loss and new algorithm state.

    ``seen`` is the examples its steps trained on, every epoch's.
    """

    update: TrainableState
    num_examples: int
    loss: float
    state: TrainableState
    seen: int


def split_state(saved: TrainableState) -> tuple[TrainableState, TrainableState]:
    """A client's saved state as (the algorithm's, the upload codec's)."""
    prefix = CODEC_STATE + "."
    codec = {n.removeprefix(prefix): t for n, t in saved.items() if n.startswith(prefix)}
    return {n: t for n, t in saved.items() if not n.startswith(prefix)}, codec


def join_state(algorithm: TrainableState, codec: TrainableState) -> TrainableState:
    """The inverse of :func:`split_state`: one flat state to save."""
    return {**algorithm, **{f"{CODEC_STATE}.{n}": t for n, t in codec.items()}}


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
        state: TrainableState,
        wrap: Wrap | None = None,
    ) -> Trained:
        """Train ``client`` from its view ``received`` of the download.

        Parts of the model outside the view (ranks above the client's LoRA rank) start and
        stay zero. ``state`` is the client's own algorithm state; ``wrap`` wraps the hook
        (the simulation injects crashes with it).
        """
        exp = self.exp
        hook = self.algorithm.client_hook(
            to_device(received, exp.device), to_device(state, exp.device)
        )
        labels = exp.train.labels[exp.clients[client]]
        hook = restricted(hook, exp.cfg.algorithm.fedrs, exp.task.num_labels, labels)
        if wrap is not None:
            hook = wrap(hook)
        seed = derive_seed(exp.cfg.seed, "train", round_, client)
        start = pad({name: received[name] for name in exp.params}, exp.params)
        trained = exp.train_client(client, start, hook, seed)
        mine = self.algorithm.client_view(trained.state, client)
        update, new_state = self.algorithm.client_update(
            received, mine, state, trained.steps, exp.learning_rates, trained.num_examples
        )
        return Trained(update, trained.num_examples, trained.loss, new_state, trained.seen)

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
        algorithm_state, codec_state = split_state(saved or {})
        received = self.down.decode(download.payload, download.layout)
        trained = self.train(received, round_, client, algorithm_state, wrap)
        update = trained.update if tamper is None else tamper(trained.update)
        report = Report(trained.num_examples, trained.loss, trained.seen)
        update, report = self.prepare(update, report, round_, client)
        payload, masked = b"", None
        if secure:
            masked = update
        else:
            payload = self.encode(update, round_, client, codec_state)
        kept = join_state(trained.state, {} if secure else self.up.state_dict())
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
