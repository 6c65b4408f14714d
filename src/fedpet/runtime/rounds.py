"""The server's pieces of a round: the cohort, the downloads, the intake of the replies.

:class:`~fedpet.runtime.server_half.ServerHalf` drives them in the protocol's order; the
runtimes only carry the payloads (:mod:`fedpet.runtime.payloads`) between it and
:class:`~fedpet.runtime.client_half.ClientHalf`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fedpet.algorithms import Aggregate, Algorithm
from fedpet.codecs import Codec
from fedpet.config import Config
from fedpet.experiment import Experiment
from fedpet.methods.lora import factor_pairs, scalings
from fedpet.methods.lora_sb import middle_factors
from fedpet.privacy.randomness import Draws
from fedpet.rundir import Checkpoint
from fedpet.runtime.counts import RoundCounts
from fedpet.runtime.lora_error import LoraError
from fedpet.runtime.payloads import ClientReply, Download
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.stages import Arrival, Rejected, Report, Stage
from fedpet.state import Schema, TrainableState, add, extract, pad, schema


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


def shared(exp: Experiment, state: TrainableState) -> TrainableState:
    """The tensors of ``state`` the algorithm shares: all but its personal ones.

    The global state keeps the personal tensors at their initial values (what a client
    first sampled starts from); the algorithm never sees them.
    """
    return {n: t for n, t in state.items() if n not in exp.personal}


def starting_state(
    exp: Experiment, algorithm: Algorithm, recorder: Recorder, resume: Checkpoint | None
) -> tuple[TrainableState, TrainableState, int]:
    """Global state, server state and rounds done when the server starts.

    Fresh: the model's initial trainable state and the algorithm's initial server state
    (of the shared tensors: :func:`shared`).
    With ``resume``: the checkpoint's states (loaded into the model) and round, with the
    recorder restored to it.
    """
    if resume is None:
        global_state = extract(exp.params)
        return global_state, algorithm.init_server_state(shared(exp, global_state)), 0
    global_state = resume.tensors["global"]
    server_state = resume.tensors.get("server") or algorithm.init_server_state(
        shared(exp, global_state)
    )
    exp.load_state(global_state)
    recorder.restore(resume)
    return global_state, server_state, resume.round


@dataclass
class Downloads:
    """Each client's encoded view of what the server sends (``Algorithm.client_view``).

    Clients with the same view (all of them, unless LoRA ranks differ) share one encoding;
    ``seed`` drives the codec's random rounding. Each client's view and layout are cut
    once, for its download and its reply; a reply leaves out what the algorithm does not
    train in ``round_``. ``committed`` gives the round of each client's committed state: a
    client committed the round before is sent only what changed since (``resync``).
    """

    algorithm: Algorithm
    codec: Codec
    sent: TrainableState
    seed: int
    round_: int
    committed: Mapping[int, int] = field(default_factory=dict)
    encoded: dict[Schema, bytes] = field(default_factory=dict)
    views: dict[int, tuple[TrainableState, Schema]] = field(default_factory=dict)

    def view(self, client: int) -> tuple[TrainableState, Schema]:
        """The client's view of what was sent, and its layout."""
        if client not in self.views:
            synced = self.committed.get(client) == self.round_ - 1
            view = self.algorithm.resync(self.algorithm.client_view(self.sent, client), synced)
            self.views[client] = view, schema(view)
        return self.views[client]

    def reply_layout(self, client: int | None = None) -> Schema:
        """The layout of ``client``'s reply (of a secure sum's, for None): what it trains."""
        layout = schema(self.sent) if client is None else self.view(client)[1]
        return tuple(e for e in layout if self.algorithm.trains(e[0], self.round_))

    def payload(self, client: int) -> tuple[bytes, Schema]:
        """The client's payload and the layout it decodes to."""
        view, layout = self.view(client)
        if layout not in self.encoded:
            self.encoded[layout] = self.codec.encode(view, self.seed)
        return self.encoded[layout], layout


@dataclass
class Intake:
    """The server's side of one round attempt: checks, aggregates and counts what arrives.

    ``received`` is what the server sent, before each client's view of it was cut; each
    decoded update goes through the ``stages``' server halves before it is aggregated.
    ``sizes`` holds every client's partition size: a reply's example count is the client's
    claim, checked against it. ``committed`` gives the round of each client's committed
    state, which its download names.
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
    committed: Mapping[int, int] = field(default_factory=dict)
    counts: RoundCounts = field(default_factory=RoundCounts)
    tally: Counter[str] = field(default_factory=Counter)
    accepted: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    report: Callable[[int, int], None] = lambda done, total: None
    heard: int = 0  # clients that replied or were lost late or failed, for ``report``

    @property
    def received(self) -> TrainableState:
        """What the server sent this attempt (before the clients' views were cut)."""
        return self.downloads.sent

    def download(self, client: int, count: bool = True) -> Download:
        """The download for ``client``, its payload counted as sent unless not ``count``."""
        payload, layout = self.downloads.payload(client)
        if count:
            self.counts.bytes_down += len(payload)
        return Download(payload, layout, self.committed.get(client, 0))

    def receive(self, client: int, reply: ClientReply) -> bool:
        """Count the reply's bytes and examples; aggregate it if every stage lets it through.

        Returns whether it was aggregated (only then is the state it kept committed).
        """
        self._heard()
        self.counts.bytes_up += len(reply.payload)
        claim = self.claim_problem(client, reply.report)
        if claim is not None:
            self.lose("rejected", client, claim)
            return False
        self.count(reply.report)
        view, layout = self.downloads.view(client)[0], self.downloads.reply_layout(client)
        try:
            try:
                update = self.codec.decode(reply.payload, layout)
            except ValueError as exc:  # decoding never unpickles anything
                raise Rejected(f"malformed payload: {exc}") from None
            counted = None if reply.report.num_examples is None else reply.report.weight
            arrival = Arrival(client, layout, tally=self.tally)
            update, weight = self._through_stages(update, counted, arrival)
        except Rejected as exc:
            self.lose("rejected", client, str(exc))
            return False
        self.aggregate.add(self.algorithm.server_view(self.received, update, client), weight)
        self._accept([client], reply.kept)
        if self.lora is not None and reply.report.num_examples is not None:
            trained = {**view, **add({n: view[n] for n in update}, update)}
            self.lora.add(pad(trained, self.received), weight)
        return True

    def receive_sum(
        self, reports: dict[int, Report], kept: bool, mean: TrainableState | None
    ) -> None:
        """Take in a secure sum: the clients' ``reports`` and the weighted ``mean`` update.

        The mean weighs each client by its reported count (1 if it withheld it); ``kept``
        says whether the clients kept a state. A claim the partition cannot have, a missing
        mean or one that fails a stage rejects every update in it: no single one can be
        taken out.
        """
        clients = list(reports)
        for _ in clients:
            self._heard()
        problems = (self.claim_problem(k, reports[k]) for k in clients)
        problem = next((p for p in problems if p is not None), None)
        weight = float(sum(r.weight for r in reports.values()))
        try:
            if problem is not None:
                raise Rejected(problem)
            for k in clients:
                self.count(reports[k])
            if mean is None:
                raise Rejected("unmasking failed")
            arrival = Arrival(-1, self.downloads.reply_layout(), len(clients), self.tally)
            mean, weight = self._through_stages(mean, weight, arrival)
        except Rejected as exc:
            for k in clients:
                self.lose("rejected", k, f"secure aggregate: {exc}")
            return
        self.aggregate.add(mean, weight, clients=len(clients))
        self._accept(clients, kept)

    def _through_stages(
        self, update: TrainableState, weight: float | None, arrival: Arrival
    ) -> tuple[TrainableState, float]:
        for stage in self.stages:
            update, weight = stage.server(update, weight, arrival)
        if weight is None:
            raise Rejected("the reply withholds its example count, which weights it")
        return update, weight

    def _accept(self, clients: list[int], kept: bool) -> None:
        self.accepted += clients
        if kept:
            self.kept += clients

    def claim_problem(self, client: int, report: Report) -> str | None:
        """Why the counts a report claims cannot be so, or None.

        The server knows the client's partition size: the weight must be it, and the
        examples trained on at most it times the local epochs.
        """
        size, claimed, seen = self.sizes[client], report.num_examples, report.seen
        if claimed is not None and claimed != size:
            return f"claims {claimed} examples, its partition holds {size}"
        if seen is not None and not 0 <= seen <= size * self.local_epochs:
            return (
                f"claims to have trained on {seen} examples, more than its {size} x "
                f"{self.local_epochs} local epochs"
            )
        return None

    def count(self, report: Report) -> None:
        """Count a client's training: the examples its steps saw, and their mean loss.

        A report without them (under DP) counts nothing.
        """
        if report.num_examples is None or report.loss is None or report.seen is None:
            return
        self.counts.examples += report.seen
        self.counts.loss_sum += report.loss * report.seen

    def lose(self, kind: str, client: int, reason: str) -> None:
        """Record a client whose update is lost: ``failed``, ``late`` or ``rejected``."""
        lost = getattr(self.counts, kind)
        lost.append({"client": client, "attempt": self.attempt, "reason": reason})
        if kind != "rejected":  # a rejected reply was counted as it arrived
            self._heard()

    def _heard(self) -> None:
        self.heard += 1
        self.report(self.heard, len(self.clients))


def round_record(
    round_: int,
    attempts: list[Intake],
    skipped: bool,
    start: float,
    updated: TrainableState | None = None,
) -> RoundRecord:
    """The recorder's view of a round from its attempts (the last one's cohort counts).

    ``updated`` is the server's new global state (None in a skipped round).
    """
    counts = sum((a.counts for a in attempts), RoundCounts())
    final = attempts[-1]
    lora = final.lora
    return RoundRecord(
        round=round_,
        counts=counts,
        train_seconds=time.perf_counter() - start,
        clients=final.clients,
        aggregated=final.aggregate.num_clients,
        attempts=len(attempts),
        skipped=skipped,
        lora_error=lora.error() if lora is not None else None,
        aggregation_error=None
        if lora is None or updated is None
        else lora.dense_error(final.received, updated),
    )


def lora_error(exp: Experiment) -> Callable[[], LoraError] | None:
    """A maker of each round's aggregation errors, for the model's LoRA or LoRA-SB modules.

    None without them. A factors outside the trainable state (FFA-LoRA's, frozen) are
    every client's own, copied once, as are LoRA-SB's frozen B and A.
    """
    pairs = factor_pairs(exp.params)
    middles = {r: ba for r, ba in middle_factors(exp.model).items() if r in exp.params}
    if not pairs and not middles:
        return None
    frozen_downs = {a for a, _ in pairs} - set(exp.params)
    params = exp.model.named_parameters()
    frozen = {n: p.detach().cpu() for n, p in params if n in frozen_downs}
    scales = scalings(exp.model, (b for _, b in pairs))
    return partial(LoraError, pairs, frozen, scales, middles)
