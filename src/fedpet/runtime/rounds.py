"""The pieces of a round both halves share: the cohort, the downloads, a reply, the intake.

:class:`~fedpet.runtime.server_half.ServerHalf` drives them in the protocol's order; the
runtimes only carry the payloads between it and
:class:`~fedpet.runtime.client_half.ClientHalf`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedpet.algorithms import Aggregate, Algorithm
from fedpet.codecs import Codec
from fedpet.config import Config
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import Draws
from fedpet.rundir import Checkpoint
from fedpet.runtime.counts import RoundCounts
from fedpet.runtime.lora_error import LoraError
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.stages import Arrival, Rejected, Stage
from fedpet.state import Schema, TrainableState, add, extract, load_, pad, schema
from fedpet.validation import update_problem


def cohort_keys(round_: int, attempt: int) -> tuple[int, ...]:
    """The keys of a round attempt's ``sampling`` stream: a retry draws a fresh cohort."""
    return (round_,) if attempt == 0 else (round_, attempt)


def draw_cohort(seed: int, num_clients: int, per_round: int, poisson: bool) -> np.ndarray:
    """A cohort drawn from ``seed``, sorted.

    ``per_round`` clients uniformly without replacement, or with ``poisson`` each client
    independently with probability ``per_round / num_clients``.
    """
    rng = np.random.default_rng(seed)
    if poisson:
        return np.flatnonzero(rng.random(num_clients) < per_round / num_clients)
    return np.sort(rng.choice(num_clients, size=per_round, replace=False))


def sample_cohort(
    seed: int,
    round_: int,
    num_clients: int,
    per_round: int,
    attempt: int = 0,
    poisson: bool = False,
) -> np.ndarray:
    """The round's clients, seeded by (seed, round); see :func:`draw_cohort`.

    A retried round (``attempt`` > 0) draws a fresh cohort from (seed, round, attempt).
    """
    keys = cohort_keys(round_, attempt)
    return draw_cohort(derive_seed(seed, "sampling", *keys), num_clients, per_round, poisson)


def round_cohort(
    cfg: Config, round_: int, num_clients: int, attempt: int = 0, draws: Draws | None = None
) -> np.ndarray:
    """The round's cohort as the config draws it.

    Under DP it comes from the server's ``draws`` (its secret: nobody can predict who is
    sampled, as amplification by sampling assumes), with Poisson sampling where asked;
    otherwise from the run seed.
    """
    per_round = cfg.federation.clients_per_round
    if not cfg.privacy.enabled:
        return sample_cohort(cfg.seed, round_, num_clients, per_round, attempt)
    assert draws is not None, "a DP cohort is drawn from the server's draws"
    seed = draws.seed("sampling", *cohort_keys(round_, attempt))
    return draw_cohort(seed, num_clients, per_round, cfg.privacy.sampling == "poisson")


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


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back: its encoded update and how much it trained on.

    ``num_examples`` is its partition size, the FedAvg weight; ``seen`` the examples its
    local steps trained on (fewer under ``train.max_steps``), and ``loss`` their mean. Under
    a stage that withholds them (DP) the reply is the update alone: these are statistics of
    the client's data that no noise covers.
    """

    payload: bytes
    num_examples: int | None = None
    loss: float | None = None
    seen: int | None = None


@dataclass
class Intake:
    """The server's side of one round attempt: checks, aggregates and counts what arrives.

    ``received`` is what the server sent, before each client's view of it was cut; each
    decoded update goes through the ``stages``' server halves before it is aggregated.
    ``sizes`` holds every client's partition size: a reply's example count is the client's
    claim, checked against it.
    """

    clients: list[int]
    sizes: list[int]
    algorithm: Algorithm
    downloads: Downloads
    aggregate: Aggregate
    codec: Codec
    stages: list[Stage]
    local_epochs: int = 1
    attempt: int = 0
    lora: LoraError | None = None
    counts: RoundCounts = field(default_factory=RoundCounts)
    accepted: list[int] = field(default_factory=list)
    report: Callable[[int, int], None] = lambda done, total: None
    heard: int = 0  # clients that replied or were lost late or failed, for ``report``

    @property
    def received(self) -> TrainableState:
        """What the server sent this attempt (before the clients' views were cut)."""
        return self.downloads.sent

    def download(self, client: int) -> bytes:
        """The payload for ``client`` (counted as sent)."""
        payload, _ = self.downloads.payload(client)
        self.counts.bytes_down += len(payload)
        return payload

    def receive(self, client: int, reply: ClientReply) -> bool:
        """Count the reply's bytes and examples; aggregate it if every stage lets it through.

        Returns whether it was aggregated (only then may the client keep its new state).
        """
        self._heard()
        self.counts.bytes_up += len(reply.payload)
        claim = self.claim_problem(client, reply)
        if claim is not None:
            self.lose("rejected", client, claim)
            return False
        self.count(reply.num_examples, reply.loss, reply.seen)
        view = self.algorithm.client_view(self.received, client)
        arrival = Arrival(client, schema(view))
        weight = None if reply.num_examples is None else float(reply.num_examples)
        try:
            try:
                update = self.codec.decode(reply.payload, arrival.layout)
            except ValueError as exc:  # decoding never unpickles anything
                raise Rejected(f"malformed payload: {exc}") from None
            for stage in self.stages:
                update, weight = stage.server(update, weight, arrival)
        except Rejected as exc:
            self.lose("rejected", client, str(exc))
            return False
        assert weight is not None, "a stage that withholds the example count gives the weight"
        self.aggregate.add(self.algorithm.server_view(self.received, update, client), weight)
        self.accepted.append(client)
        if self.lora is not None:
            self.lora.add(pad(add(view, update), self.received), weight)
        return True

    def claim_problem(self, client: int, reply: ClientReply) -> str | None:
        """Why the counts a reply claims cannot be so, or None.

        The server knows the client's partition size: the weight must be it, and the
        examples trained on at most it times the local epochs.
        """
        size, claimed, seen = self.sizes[client], reply.num_examples, reply.seen
        if claimed is not None and claimed != size:
            return f"claims {claimed} examples, its partition holds {size}"
        if seen is not None and not 0 <= seen <= size * self.local_epochs:
            return (
                f"claims to have trained on {seen} examples, more than its {size} x "
                f"{self.local_epochs} local epochs"
            )
        return None

    def count(self, num_examples: int | None, loss: float | None, seen: int | None) -> None:
        """Count a client's training: the examples its steps saw, and their mean loss.

        A reply without them (under DP) counts nothing.
        """
        if num_examples is None or loss is None or seen is None:
            return
        self.counts.examples += seen
        self.counts.loss_sum += loss * seen

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
        lost = getattr(self.counts, kind)
        lost.append({"client": client, "attempt": self.attempt, "reason": reason})
        if kind != "rejected":  # a rejected reply was counted as it arrived
            self._heard()

    def _heard(self) -> None:
        self.heard += 1
        self.report(self.heard, len(self.clients))


def round_record(round_: int, attempts: list[Intake], skipped: bool, start: float) -> RoundRecord:
    """The recorder's view of a round from its attempts (the last one's cohort counts)."""
    counts = sum((a.counts for a in attempts), RoundCounts())
    final = attempts[-1]
    return RoundRecord(
        round=round_,
        counts=counts,
        train_seconds=time.perf_counter() - start,
        clients=final.clients,
        aggregated=final.aggregate.num_clients,
        attempts=len(attempts),
        skipped=skipped,
        lora_error=final.lora.error() if final.lora is not None else None,
    )


def lora_error(exp: Experiment) -> LoraError | None:
    """The aggregation-error accumulator of a round whose state has LoRA factors; else None."""
    if not any("lora_B" in n for n in exp.params):
        return None
    params = exp.model.named_parameters()
    frozen = {n: p.detach().cpu() for n, p in params if "lora_A" in n and n not in exp.params}
    return LoraError(list(exp.params), frozen)
