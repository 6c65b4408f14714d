"""The two halves of a round that every runtime shares: a client's reply, the server's intake.

The simulation runtime calls them in one process; the Flower runtime calls
:func:`client_reply` inside its ClientApp and :class:`Intake` inside its Strategy adapter,
so training, encoding, validation and aggregation are written once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fedpet.algorithms import Aggregate, Algorithm, ClientHook
from fedpet.codecs import Codec, send_with_feedback
from fedpet.config import Config, PrivacyConfig
from fedpet.experiment import Experiment
from fedpet.privacy.dp import client_noise_std, clip, gaussian_noise, l2_norm, release
from fedpet.rundir import Checkpoint
from fedpet.runtime.lora_error import LoraError
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import Schema, TrainableState, add, extract, load_, pad, schema
from fedpet.validation import receive_update, update_problem


def sample_cohort(
    seed: int,
    round_: int,
    num_clients: int,
    per_round: int,
    attempt: int = 0,
    poisson: bool = False,
) -> np.ndarray:
    """The round's clients, seeded by (seed, round).

    ``per_round`` of them uniformly without replacement, or with ``poisson`` each client
    independently with probability ``per_round / num_clients``. A retried round
    (``attempt`` > 0) draws a fresh cohort from (seed, round, attempt).
    """
    keys = (round_,) if attempt == 0 else (round_, attempt)
    rng = np.random.default_rng(derive_seed(seed, "sampling", *keys))
    if poisson:
        return np.flatnonzero(rng.random(num_clients) < per_round / num_clients)
    return np.sort(rng.choice(num_clients, size=per_round, replace=False))


def round_cohort(cfg: Config, round_: int, num_clients: int, attempt: int = 0) -> np.ndarray:
    """The round's cohort as the config draws it: Poisson sampling under DP that asks for it."""
    poisson = cfg.privacy.enabled and cfg.privacy.sampling == "poisson"
    per_round = cfg.federation.clients_per_round
    return sample_cohort(cfg.seed, round_, num_clients, per_round, attempt, poisson)


def starting_clip(cfg: Config, resume: Checkpoint | None) -> float:
    """DP's clip for the first round to run: the configured one, or the checkpointed one."""
    if resume is None:
        return cfg.privacy.clip
    return float(resume.state.get("dp_clip", cfg.privacy.clip))


def release_round(cfg: Config, intake: Intake, clip: float, round_: int, skipped: bool) -> float:
    """DP's release of a round's aggregate (see :func:`~fedpet.privacy.dp.release`).

    Returns the next round's clip: unchanged without DP or when the round was skipped.
    """
    if not cfg.privacy.enabled or skipped:
        return clip
    return release(cfg, intake.aggregate, clip, intake.within_clip, round_)


def clip_meta(cfg: Config, record: RoundRecord, clip: float, next_clip: float) -> dict[str, float]:
    """Log the round's DP clip in ``record``; the checkpoint meta that carries the next one."""
    if not cfg.privacy.enabled:
        return {}
    record.dp_clip = clip
    return {"dp_clip": next_clip}


def starting_state(
    exp: Experiment, algorithm: Algorithm, recorder: Recorder, resume: Checkpoint | None
) -> tuple[TrainableState, TrainableState, int]:
    """Global state, server state and rounds done when the server starts.

    Fresh: the model's initial trainable state and the algorithm's initial server state.
    With ``resume``: the checkpoint's states (loaded into the model) and round, with the
    recorder restored to it.
    """
    if resume is None:
        global_state = extract(exp.params)
        return global_state, algorithm.init_server_state(global_state), 0
    global_state = resume.tensors["global"]
    server_state = resume.tensors.get("server") or algorithm.init_server_state(global_state)
    load_(exp.params, global_state)
    recorder.restore(resume)
    return global_state, server_state, resume.round


@dataclass
class Downloads:
    """Each client's encoded view of what the server sends (``Algorithm.client_view``).

    Clients with the same view (all of them, unless LoRA ranks differ) share one encoding;
    ``seed`` drives the codec's random rounding.
    """

    algorithm: Algorithm
    codec: Codec
    sent: TrainableState
    seed: int
    encoded: dict[Schema, bytes] = field(default_factory=dict)

    def payload(self, client: int) -> tuple[bytes, Schema]:
        """The client's payload and the layout it decodes to."""
        view = self.algorithm.client_view(self.sent, client)
        layout = schema(view)
        if layout not in self.encoded:
            self.encoded[layout] = self.codec.encode(view, self.seed)
        return self.encoded[layout], layout


def update_weight(cfg: Config, examples: int | None) -> int:
    """A client's weight in the aggregate: its example count, or 1 under DP (fixed weights)."""
    if cfg.privacy.enabled:
        return 1
    assert examples is not None, "without DP every reply carries its example count"
    return examples


def privatize(cfg: Config, update: TrainableState, round_: int, client: int) -> TrainableState:
    """Under DP with distributed noise, the update clipped plus the client's noise share.

    Otherwise the update as it is (with central noise, the server clips).
    """
    dp = cfg.privacy
    if not (dp.enabled and dp.noise == "distributed"):
        return update
    noise_seed = derive_seed(cfg.seed, "dp-noise", round_, client)
    noise = gaussian_noise(update, client_noise_std(cfg), noise_seed)
    return add(clip(update, dp.clip), noise)


def upload(
    exp: Experiment,
    codec: Codec,
    update: TrainableState,
    round_: int,
    client: int,
    residual: TrainableState,
) -> tuple[bytes, TrainableState]:
    """A client's encoded update and its new error-feedback residual (empty without it).

    The update goes through :func:`privatize` first.
    """
    seed = derive_seed(exp.cfg.seed, "codec-up", round_, client)
    update = privatize(exp.cfg, update, round_, client)
    if not exp.cfg.codec.feedback:
        return codec.encode(update, seed), {}
    return send_with_feedback(codec, update, residual, schema(update), seed)


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back: its encoded update and how much it trained on.

    Under DP the reply is the update alone (see :func:`client_reply`): the example count
    and the training loss are statistics of the client's data that no noise covers.
    """

    payload: bytes
    num_examples: int | None = None
    loss: float | None = None


def client_stats(cfg: Config, num_examples: int, loss: float) -> tuple[int | None, float | None]:
    """What a client reports of its training besides its update: example count and mean loss.

    Nothing under DP: they are statistics of the client's data that no noise covers.
    """
    return (None, None) if cfg.privacy.enabled else (num_examples, loss)


def client_reply(cfg: Config, payload: bytes, num_examples: int, loss: float) -> ClientReply:
    """The reply a client sends: the payload and its :func:`client_stats`."""
    return ClientReply(payload, *client_stats(cfg, num_examples, loss))


def local_update(
    exp: Experiment,
    algorithm: Algorithm,
    received: TrainableState,
    round_: int,
    client: int,
    hook: ClientHook | None = None,
    client_state: TrainableState | None = None,
) -> tuple[TrainableState, int, float, TrainableState]:
    """Train ``client`` from what it received; its update, examples, mean loss and new state.

    ``received`` is the client's view of the download; parts of the model outside it (ranks
    above the client's LoRA rank) start and stay zero. ``hook`` replaces the algorithm's
    client hook (the simulation wraps it to inject faults); ``client_state`` is the client's
    own algorithm state, if the algorithm keeps one.
    """
    own = client_state or {}
    seed = derive_seed(exp.cfg.seed, "train", round_, client)
    start = pad({name: received[name] for name in exp.params}, exp.params)
    trained = exp.train_client(client, start, hook or algorithm.client_hook(received, own), seed)
    mine = algorithm.client_view(trained.state, client)
    update, new_state = algorithm.client_update(
        received, mine, own, trained.steps, exp.learning_rates, trained.num_examples
    )
    return update, trained.num_examples, trained.loss, new_state


@dataclass
class Intake:
    """The server's side of one round attempt: checks, aggregates and counts what arrives.

    ``received`` is what the server sent, before each client's view of it was cut.
    """

    clients: list[int]
    algorithm: Algorithm
    received: TrainableState
    aggregate: Aggregate
    max_norm: float | None
    attempt: int = 0
    lora: LoraError | None = None
    dp: PrivacyConfig | None = None
    clip: float = 0.0
    within_clip: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    examples: int = 0
    trained: int = 0
    loss_sum: float = 0.0
    accepted: list[int] = field(default_factory=list)
    failed: list[dict[str, object]] = field(default_factory=list)
    late: list[dict[str, object]] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        exp: Experiment,
        algorithm: Algorithm,
        clients: list[int],
        received: TrainableState,
        attempt: int = 0,
        track_lora: bool = True,
        clip: float | None = None,
    ) -> Intake:
        """A round attempt's intake for the clients that start from ``received``.

        Its aggregate keeps the updates if the algorithm needs them and knows the number of
        clients; a LoRA run also tracks the aggregation error, unless ``track_lora`` is off
        (secure aggregation shows no single update) or DP is on (the error is computed from
        single updates). ``clip`` is DP's current clip, if it adapts.
        """
        private = exp.cfg.privacy.enabled
        return cls(
            clients,
            algorithm,
            received,
            Aggregate(keep_updates=algorithm.keeps_updates, population=len(exp.clients)),
            exp.cfg.federation.max_update_norm,
            attempt=attempt,
            lora=lora_error(exp) if track_lora and not private else None,
            dp=exp.cfg.privacy if private else None,
            clip=exp.cfg.privacy.clip if clip is None else clip,
        )

    def receive(self, client: int, reply: ClientReply, codec: Codec, local_epochs: int) -> bool:
        """Count the reply's bytes and examples; aggregate it if it passes validation.

        Returns whether it was aggregated (only then may the client keep its new state).
        """
        self.bytes_up += len(reply.payload)
        self.count(reply.num_examples, reply.loss, local_epochs)
        view = self.algorithm.client_view(self.received, client)
        update, problem = receive_update(codec, reply.payload, schema(view), self.max_norm)
        if update is None:
            self.lose("rejected", client, str(problem))
            return False
        if self.dp is not None:  # fixed weights; with central noise the server clips
            weight = 1.0
            if self.dp.noise == "central":
                self.within_clip += l2_norm(update) <= self.clip
                update = clip(update, self.clip)
        else:
            assert reply.num_examples is not None, "without DP every reply has its count"
            weight = float(reply.num_examples)
        self.aggregate.add(self.algorithm.server_view(self.received, update, client), weight)
        self.accepted.append(client)
        if self.lora is not None:
            self.lora.add(pad(add(view, update), self.received), weight)
        return True

    def count(self, num_examples: int | None, loss: float | None, local_epochs: int) -> None:
        """Count a client's training: its examples (per epoch) and its mean loss.

        A reply without them (under DP) counts nothing.
        """
        if num_examples is None or loss is None:
            return
        self.examples += num_examples * local_epochs
        self.trained += num_examples
        self.loss_sum += loss * num_examples

    def receive_mean(self, clients: list[int], mean: TrainableState | None, weight: float) -> None:
        """Aggregate the weighted mean update of ``clients`` (secure aggregation's output).

        Only the mean can be checked; if it is missing or fails the checks, every update in
        it is rejected.
        """
        layout = schema(self.received)
        problem = "unmasking failed" if mean is None else update_problem(mean, layout, None)
        if mean is None or problem is not None:
            for k in clients:
                self.lose("rejected", k, f"secure aggregate: {problem}")
            return
        self.aggregate.add(mean, weight, clients=len(clients))
        self.accepted += clients

    def lose(self, kind: str, client: int, reason: str) -> None:
        """Record a client whose update is lost: ``failed``, ``late`` or ``rejected``."""
        getattr(self, kind).append({"client": client, "attempt": self.attempt, "reason": reason})


def round_record(round_: int, attempts: list[Intake], skipped: bool, start: float) -> RoundRecord:
    """The recorder's view of a round from its attempts (the last one's cohort counts)."""
    trained = sum(a.trained for a in attempts)
    return RoundRecord(
        round=round_,
        train_loss=sum(a.loss_sum for a in attempts) / trained if trained else None,
        examples=sum(a.examples for a in attempts),
        bytes_up=sum(a.bytes_up for a in attempts),
        bytes_down=sum(a.bytes_down for a in attempts),
        train_seconds=time.perf_counter() - start,
        clients=attempts[-1].clients,
        aggregated=attempts[-1].aggregate.num_clients,
        attempts=len(attempts),
        skipped=skipped,
        failed=[x for a in attempts for x in a.failed],
        late=[x for a in attempts for x in a.late],
        rejected=[x for a in attempts for x in a.rejected],
        lora_error=attempts[-1].lora.error() if attempts[-1].lora is not None else None,
    )


def lora_error(exp: Experiment) -> LoraError | None:
    """The aggregation-error accumulator of a round whose state has LoRA factors; else None."""
    if not any("lora_B" in n for n in exp.params):
        return None
    params = exp.model.named_parameters()
    frozen = {n: p.detach() for n, p in params if "lora_A" in n and n not in exp.params}
    return LoraError(list(exp.params), frozen)
