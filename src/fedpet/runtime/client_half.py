"""The client's half of a round, the one entry point both runtimes call.

A client decodes what the server sent, trains the shared model from it with the
algorithm's hook (inside FedRS's restricted softmax when ``algorithm.fedrs`` is set), turns
the result into the algorithm's update and its own new state, sends the update through the
stages' client halves (DP's clip and noise share, error feedback) and encodes it. The
simulation runtime calls :meth:`ClientHalf.run` in process; Flower's ClientApp calls it
from its train handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fedpet.algorithms import Algorithm, ClientHook, get_algorithm
from fedpet.algorithms.fedrs import restricted
from fedpet.codecs import Codec, get_codec
from fedpet.devices import to_device
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import Draws, fresh
from fedpet.runtime.pipeline import stages_for, withholds_stats
from fedpet.runtime.rounds import ClientReply
from fedpet.seeding import derive_seed
from fedpet.stages import ClientSide, Stage
from fedpet.state import Schema, TrainableState, pad, schema

Wrap = Callable[[ClientHook], ClientHook]
Tamper = Callable[[TrainableState], TrainableState]


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


def split_memory(saved: TrainableState, stages: list[Stage]) -> dict[str, TrainableState]:
    """A client's saved state by owner: ``""`` the algorithm's, each stage's by its name.

    A stage's tensors are saved under ``<stage name>.<tensor name>``.
    """
    parts: dict[str, TrainableState] = {"": {}, **{s.name: {} for s in stages}}
    for name, tensor in saved.items():
        owner, _, rest = name.partition(".")
        if owner in parts and owner and rest:
            parts[owner][rest] = tensor
        else:
            parts[""][name] = tensor
    return parts


def join_memory(parts: dict[str, TrainableState]) -> TrainableState:
    """The inverse of :func:`split_memory`: one flat state to save."""
    return {
        f"{owner}.{name}" if owner else name: tensor
        for owner, state in parts.items()
        for name, tensor in state.items()
    }


@dataclass
class ClientHalf:
    """Local training, the algorithm's client update and the stages' client halves."""

    exp: Experiment
    algorithm: Algorithm
    stages: list[Stage]
    up: Codec
    down: Codec
    layouts: dict[int, Schema] = field(default_factory=dict)

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
            get_codec(cfg.codec.up),
            get_codec(cfg.codec.down),
        )

    def layout(self, client: int) -> Schema:
        """The names and shapes of what ``client`` receives: its view of the download.

        The download holds the model's trainable state and whatever the algorithm sends
        with it (SCAFFOLD's control), shaped as the algorithm's initial server state.
        """
        if client not in self.layouts:
            params = {n: p.detach() for n, p in self.exp.params.items()}
            download = self.algorithm.download(params, self.algorithm.init_server_state(params))
            self.layouts[client] = schema(self.algorithm.client_view(download, client))
        return self.layouts[client]

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

    def prepare(
        self, update: TrainableState, round_: int, client: int, memory: dict[str, TrainableState]
    ) -> tuple[TrainableState, list[ClientSide]]:
        """The update through every stage's client half; each stage's side (its memory)."""
        sides = []
        for stage in self.stages:
            side = ClientSide(round_, client, memory.get(stage.name, {}))
            update = stage.client(update, side)
            sides.append(side)
        return update, sides

    def stats(self, trained: Trained) -> tuple[int | None, float | None, int | None]:
        """What the client reports besides its update, unless withheld.

        Its weight (the partition size), its mean loss and the examples its steps saw.
        """
        if withholds_stats(self.stages):
            return None, None, None
        return trained.num_examples, trained.loss, trained.seen

    def run(
        self,
        payload: bytes,
        round_: int,
        client: int,
        saved: TrainableState | None = None,
        wrap: Wrap | None = None,
        tamper: Tamper | None = None,
    ) -> tuple[ClientReply, TrainableState]:
        """One client's round: its reply to the server's ``payload`` and its state to keep.

        ``saved`` is what the client kept from earlier rounds (algorithm state and stage
        memories, see :func:`split_memory`); ``tamper`` replaces the trained update (the
        simulation's malicious clients).
        """
        memory = split_memory(saved or {}, self.stages)
        received = self.down.decode(payload, self.layout(client))
        trained = self.train(received, round_, client, memory[""], wrap)
        update = trained.update if tamper is None else tamper(trained.update)
        sent, memories = self.send(update, round_, client, memory)
        kept = {"": trained.state, **memories}
        return ClientReply(sent, *self.stats(trained)), join_memory(kept)

    def send(
        self, update: TrainableState, round_: int, client: int, memory: dict[str, TrainableState]
    ) -> tuple[bytes, dict[str, TrainableState]]:
        """The payload of ``update`` after the stages' client halves; their new memories."""
        update, sides = self.prepare(update, round_, client, memory)
        sent = self.up.encode(update, derive_seed(self.exp.cfg.seed, "codec-up", round_, client))
        if any(stage.wants_sent for stage in self.stages):
            decoded = self.up.decode(sent, schema(update))
            for stage, side in zip(self.stages, sides, strict=True):
                if stage.wants_sent:
                    stage.sent(update, decoded, side)
        return sent, {s.name: side.memory for s, side in zip(self.stages, sides, strict=True)}
