"""The Flower runtime: a ClientApp and a ServerApp that carry the round protocol's messages.

The ClientApp answers a train message with :meth:`~fedpet.runtime.client_half.ClientHalf.run`
on a backbone loaded once per process; the ServerApp drives :class:`FedpetStrategy`, a
Flower ``Strategy`` that routes :class:`~fedpet.runtime.server_half.ServerHalf`'s downloads
to the nodes holding the cohort's clients and hands it their replies. Payloads travel as
the codec's exact bytes (:mod:`fedpet.runtime.messages`), so byte counts equal the
simulation's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedpet.config import Config, to_dict
from fedpet.experiment import Experiment, prepare
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_half import ClientHalf
from fedpet.runtime.messages import from_record, number, parse_reply, reply_metrics, to_record
from fedpet.runtime.pipeline import secure_weight, withholds_stats
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.roster import Roster
from fedpet.runtime.rounds import Intake
from fedpet.runtime.secagg import (
    is_secure,
    masked_reply,
    read_instructions,
    secure_mod,
    secure_round,
)
from fedpet.runtime.server_half import ServerHalf
from fedpet.state import schema

_CLIENTS: dict[str, ClientHalf] = {}  # per process: the backbone and data, loaded once


def cached_client(cfg: Config) -> ClientHalf:
    """The client half for ``cfg`` in this process, its experiment prepared on first use."""
    key = repr(to_dict(cfg))
    if key not in _CLIENTS:
        _CLIENTS.clear()
        _CLIENTS[key] = ClientHalf.of(prepare(cfg))
    return _CLIENTS[key]


def cached_experiment(cfg: Config) -> Experiment:
    """The experiment for ``cfg`` in this process (see :func:`cached_client`)."""
    return cached_client(cfg).exp


def train_reply(cfg: Config, msg: Message) -> Message:
    """Train the client (partition) a train message names; reply with its encoded update.

    In a secure round the reply goes through Flower's SecAgg+ mod, which masks it: the
    client sends its update after its stages' client halves (DP's noise share), unencoded.
    """
    half = cached_client(cfg)
    if is_secure(msg):
        payload, round_, client = read_instructions(msg)
        received = half.down.decode(payload, half.layout(client))
        trained = half.train(received, round_, client, {})
        update, _ = half.prepare(trained.update, round_, client, {})
        weight = secure_weight(half.stages, trained.num_examples)
        return masked_reply(msg, update, *half.stats(trained), weight)
    config = msg.content.config_records["config"]
    round_, client = int(number(config["round"])), int(number(config["client"]))
    reply, _ = half.run(from_record(msg.content.array_records["arrays"]), round_, client)
    content = RecordDict({"arrays": to_record(reply.payload), "metrics": reply_metrics(reply)})
    return Message(content=content, reply_to=msg)


def query_reply(msg: Message, context: Context) -> Message:
    """Tell the server which client this node holds (its ``partition-id``)."""
    partition = int(context.node_config.get("partition-id", -1))
    content = RecordDict({"metrics": MetricRecord({"partition-id": partition})})
    return Message(content=content, reply_to=msg)


def make_client_app(cfg: Config) -> ClientApp:
    """A ClientApp for ``cfg`` (Flower's simulation engine, where the config is in hand)."""
    app = ClientApp(mods=[secure_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(cfg, msg)

    app.query()(query_reply)
    return app


class FedpetStrategy(Strategy):
    """Flower's strategy interface over fedpet's round: sampling, intake, algorithm, recorder.

    Each SuperNode holds one client (its ``partition-id``, checked against the node map
    ``bound`` when there is one: :class:`~fedpet.runtime.roster.Roster`); the cohort is
    sampled exactly as in the simulation runtime and routed to the nodes holding those
    clients. A node that does not answer, or answers with an error, is a failed client of
    the round.
    """

    def __init__(
        self,
        exp: Experiment,
        recorder: Recorder,
        resume: Checkpoint | None = None,
        bound: Mapping[int, int] | None = None,
    ) -> None:
        self.exp, self.cfg = exp, exp.cfg
        self.roster = Roster(len(exp.clients), bound)
        self.server = ServerHalf(exp, recorder, resume, secure=exp.cfg.secagg.enabled)
        self.offset = self.server.done
        self.waited = False
        self.sent: dict[int, int] = {}
        self.intake: Intake | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's cohort and send each node holding one of its clients the state."""
        round_ = server_round + self.offset
        intake = self.server.open(round_)
        cohort = intake.clients
        if not self.waited:  # the run starts once every client's node answers, or times out
            self.roster.discover(grid, patience=self.cfg.federation.round_timeout)
            self.waited = True
        elif any(k not in self.roster.nodes for k in cohort):
            self.roster.discover(grid, patience=0.0)
        self.intake, self.sent = intake, {}
        targets: dict[int, int] = {}  # node -> client
        for k in intake.clients:
            if k in self.roster.nodes:
                targets[self.roster.nodes[k]] = k
            else:
                intake.lose("failed", k, "no node holds this client")
        if self.cfg.secagg.enabled:
            self.secure_round(grid, round_, self.server.down.encode(intake.received), targets)
            return []
        self.sent = targets
        messages = []
        for node, k in targets.items():
            config = ConfigRecord({"round": round_, "client": k})
            content = RecordDict({"arrays": to_record(intake.download(k)), "config": config})
            messages.append(Message(content=content, dst_node_id=node, message_type="train"))
        return messages

    def secure_round(
        self, grid: Grid, round_: int, payload: bytes, targets: dict[int, int]
    ) -> None:
        """Run the round's exchange through SecAgg+ and take in the unmasked mean.

        SecAgg+ needs four exchanges, so they happen here and the round's own send
        carries nothing. Bytes count every message of the protocol.
        """
        intake = self.intake
        assert intake is not None, "configure_train sets the intake"
        # under DP the clients also clip and noise their updates themselves
        stages = self.server.stages
        sizes = (secure_weight(stages, len(self.exp.clients[k])) for k in targets.values())
        max_weight = max(sizes, default=1)
        outcome = secure_round(
            grid,
            self.cfg.secagg,
            targets,
            payload,
            round_,
            schema(self.server.global_state),
            float(max_weight),
            self.cfg.federation.round_timeout,
        )
        intake.counts.bytes_up += outcome.bytes_up
        intake.counts.bytes_down += outcome.bytes_down
        summed, weight = [], 0.0
        for node, k in targets.items():
            if node in outcome.replies:
                examples, loss, seen = outcome.replies[node]
                intake.count(examples, loss, seen)
                summed.append(k)
                weight += secure_weight(stages, examples)
            elif node in outcome.silent:
                self.roster.forget(node)
                intake.lose("failed", k, f"node {node} did not answer")
            else:
                intake.lose("failed", k, f"node {node} dropped out of secure aggregation")
        if summed:
            intake.receive_mean(summed, outcome.mean, weight)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check and aggregate the replies, update the global state, evaluate and checkpoint.

        The global state stays with the server half: no arrays go back to Flower.
        """
        intake = self.intake
        assert intake is not None, "configure_train runs first"
        answered = set()
        # in cohort order, as the simulation adds them: float sums depend on the order
        known = [r for r in replies if r.metadata.src_node_id in self.sent]
        for reply in sorted(known, key=lambda r: self.sent[r.metadata.src_node_id]):
            node = reply.metadata.src_node_id
            k = self.sent[node]
            answered.add(node)
            if reply.has_error():
                intake.lose("failed", k, f"error from node {node}: {reply.error.reason}")
                continue
            try:
                parsed = parse_reply(reply, withholds_stats(self.server.stages))
            except (KeyError, TypeError, ValueError) as exc:
                intake.lose("rejected", k, f"malformed reply: {exc}")
                continue
            self.server.receive(intake, k, parsed)
        for node, k in self.sent.items():
            if node not in answered:
                self.roster.forget(node)
                intake.lose("failed", k, f"node {node} did not answer")
        self.server.close(server_round + self.offset, [intake])
        # no arrays: Flower would only hand them back to configure_train, which sends each
        # client its own download (encoding the whole global state here cost a round's copy)
        return None, MetricRecord({"aggregated": intake.aggregate.num_clients})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No client-side evaluation: the server evaluates the global state on validation."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None

    def summary(self) -> None:
        """Flower logs this when the strategy starts."""


def run_strategy(
    exp: Experiment,
    recorder: Recorder,
    grid: Grid,
    resume: Checkpoint | None = None,
    bound: Mapping[int, int] | None = None,
) -> None:
    """Run the remaining rounds of ``exp`` on ``grid`` through :class:`FedpetStrategy`.

    ``bound`` is the deployment's node map (node id -> client), if it has one.
    """
    strategy = FedpetStrategy(exp, recorder, resume, bound)
    rounds = exp.cfg.federation.rounds - strategy.offset
    timeout = exp.cfg.federation.round_timeout
    strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=timeout)


def make_server_app(
    exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None
) -> ServerApp:
    """A ServerApp running ``exp`` (Flower's simulation engine, in this process)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_strategy(exp, recorder, grid, resume)

    return app


def run_flower_simulation(
    exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None
) -> None:
    """Run the experiment on Flower's simulation engine (Ray), one virtual node per client."""
    from flwr.simulation import run_simulation

    # actors asking for no GPU keep seeing the machine's GPUs (a cuda run's clients use
    # them); this is Ray's coming default, and it silences Ray's warning about it
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with quiet_flower():
        run_simulation(
            server_app=make_server_app(exp, recorder, resume),
            client_app=make_client_app(exp.cfg),
            num_supernodes=len(exp.clients),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )


class _NotDeprecated(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


@contextmanager
def quiet_flower() -> Iterator[None]:
    """Leave out Flower's round banners (INFO) and its notice that a simulation is deprecated.

    fedpet's round lines are then what a run prints; Flower's warnings stay.
    ``run_simulation`` is the in-process engine ``flower-sim`` is built on, on purpose.
    """
    logger = logging.getLogger("flwr")
    level, quiet = logger.level, _NotDeprecated()
    logger.setLevel(logging.WARNING)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeFilter(quiet)
