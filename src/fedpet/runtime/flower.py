"""The Flower runtime's server side: a ServerApp that carries the round protocol's messages.

The ServerApp drives :class:`FedpetStrategy`, a Flower ``Strategy`` that routes
:class:`~fedpet.runtime.server_half.ServerHalf`'s downloads to the nodes holding the
cohort's clients and hands it their replies; the ClientApp is
:mod:`fedpet.runtime.flower_client`. Payloads travel as the codec's exact bytes
(:mod:`fedpet.runtime.messages`), so byte counts equal the simulation's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedpet.experiment import Experiment
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_store import state_bytes
from fedpet.runtime.client_tests import ClientScore
from fedpet.runtime.flower_client import make_client_app
from fedpet.runtime.messages import download_config, number, parse_reply, to_record
from fedpet.runtime.pipeline import reported
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.roster import Roster
from fedpet.runtime.rounds import Intake
from fedpet.runtime.secagg import secure_round
from fedpet.runtime.server_half import ServerHalf
from fedpet.state import TrainableState


def run_key(run: Path) -> str:
    """The name a run's nodes keep its clients' states under: its directory's, hashed.

    A resumed run writes to the same directory, so its clients find their states.
    """
    return hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:16]


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
        self.run = run_key(recorder.run.path)
        self.offset = self.server.done
        self.waited = False
        self.sent: dict[int, int] = {}
        self.intake: Intake | None = None
        self.grid: Grid | None = None
        self.server.scorer = self.score_clients

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's cohort and send each node holding one of its clients the state."""
        round_ = server_round + self.offset
        self.grid = grid
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
            self.secure_round(grid, round_, targets)
            return []
        self.sent = targets
        messages = []
        for node, k in targets.items():
            download = intake.download(k)
            config = ConfigRecord(download_config(download, round_, k, self.run))
            content = RecordDict({"arrays": to_record(download.payload), "config": config})
            messages.append(Message(content=content, dst_node_id=node, message_type="train"))
        return messages

    def secure_round(self, grid: Grid, round_: int, targets: dict[int, int]) -> None:
        """Run the round's exchange through SecAgg+ and hand the intake the unmasked mean.

        SecAgg+ needs four exchanges, so they happen here and the round's own send
        carries nothing. Bytes count every message of the protocol.
        """
        intake = self.intake
        assert intake is not None, "configure_train sets the intake"
        downloads = {}
        for node, k in targets.items():
            download = intake.download(k, count=False)  # the protocol's messages are counted
            downloads[node] = download.payload, download_config(download, round_, k, self.run)
        # each client's weight as its stages leave its report (1 where DP withholds it)
        stages = self.server.stages
        weights = (reported(stages, len(self.exp.clients[k])).weight for k in targets.values())
        outcome = secure_round(
            grid,
            self.cfg.secagg,
            downloads,
            round_,
            intake.downloads.reply_layout(),
            max(weights, default=1.0),
            self.cfg.federation.round_timeout,
        )
        intake.counts.bytes_up += outcome.bytes_up
        intake.counts.bytes_down += outcome.bytes_down
        summed = {}
        for node, k in targets.items():
            if node in outcome.replies:
                summed[k] = outcome.replies[node]
            elif node in outcome.silent:
                self.roster.forget(node)
                intake.lose("failed", k, f"node {node} did not answer")
            else:
                intake.lose("failed", k, f"node {node} dropped out of secure aggregation")
        if summed:
            intake.receive_sum(summed, outcome.kept, outcome.mean)

    def score_clients(
        self, global_state: TrainableState, committed: Mapping[int, int]
    ) -> dict[int, ClientScore]:
        """Ask every client's node for its scores on its local test split.

        A client whose node is unknown or does not answer has no scores this time.
        """
        assert self.grid is not None, "configure_train keeps the grid"
        arrays = to_record(state_bytes(global_state))
        messages, clients = [], {}
        for k, node in self.roster.nodes.items():
            config = ConfigRecord({"client": k, "committed": committed.get(k, 0), "run": self.run})
            content = RecordDict({"arrays": arrays, "config": config})
            messages.append(Message(content=content, dst_node_id=node, message_type="evaluate"))
            clients[node] = k
        timeout = self.cfg.federation.round_timeout
        scores = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in clients or reply.has_error():
                continue
            figures = reply.content.metric_records["metrics"]
            personal = figures.get("personal")
            scores[clients[node]] = ClientScore(
                number(figures["global"]), None if personal is None else number(personal)
            )
        return scores

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
                parsed = parse_reply(reply)
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
