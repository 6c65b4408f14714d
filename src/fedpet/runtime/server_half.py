"""The server's half of a round, written once; every runtime drives it.

The round protocol, in order:

1. :meth:`ServerHalf.open` samples the attempt's cohort, opens the stages and readies each
   client's download (its view of the algorithm's download, encoded);
2. the runtime carries each download to its client, whose
   :class:`~fedpet.runtime.client_half.ClientHalf` trains and replies;
3. :meth:`ServerHalf.receive` takes a reply in: it decodes it, passes it through the
   stages' server halves (validation, DP's clip) and aggregates it;
4. :meth:`ServerHalf.close` ends the round: unless too few were aggregated (a skipped
   round), the stages release the aggregate (DP's noise) and the algorithm updates the
   global and server state, and the states that the aggregated clients kept are
   committed (the round each kept one in, which its next download names); the recorder
   evaluates (every client's local test split too, through the runtime's ``scorer``), logs
   and checkpoints.

The simulation runtime repeats 1-3 for a retry with a fresh cohort when too few succeed;
the Flower runtime turns 1 and 3 into messages.
"""

from __future__ import annotations

import logging
import time

from fedpet.algorithms import Aggregate, get_algorithm
from fedpet.codecs import get_codec
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import server_draws
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_tests import Scorer
from fedpet.runtime.payloads import ClientReply
from fedpet.runtime.pipeline import stages_for
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.rounds import (
    Downloads,
    Intake,
    lora_error,
    round_cohort,
    round_record,
    shared,
    starting_state,
)
from fedpet.seeding import derive_seed

STAGES_KEY = "stages"
"""The checkpoint meta's key of each stage's state (by stage name)."""
COMMITTED_KEY = "client_rounds"
"""The checkpoint meta's key of the round of each client's committed state."""


class ServerHalf:
    """The server's state across rounds and the steps of each.

    Parameters
    ----------
    exp
        The experiment (the server's model evaluates the global state).
    recorder
        Evaluates, logs and checkpoints each round.
    resume
        The checkpoint to continue from, if any.
    secure
        Updates arrive only as a secure sum: no single one is seen (no LoRA error tracked).
    """

    def __init__(
        self,
        exp: Experiment,
        recorder: Recorder,
        resume: Checkpoint | None = None,
        secure: bool = False,
    ) -> None:
        cfg = exp.cfg
        self.exp, self.recorder, self.cfg = exp, recorder, cfg
        # the aggregation error is computed from single updates (none in a secure sum) of
        # both LoRA factors (none where one stays with the clients)
        self.lora = None if secure or exp.personal else lora_error(exp)
        self.algorithm = get_algorithm(cfg.algorithm)
        self.up, self.down = get_codec(cfg.codec.up), get_codec(cfg.codec.down)
        self.draws = server_draws(cfg, resume.state if resume is not None else {})
        self.stages = stages_for(cfg, self.draws)
        self.global_state, self.server_state, self.done = starting_state(
            exp, self.algorithm, recorder, resume
        )
        meta = resume.state if resume is not None else {}
        for stage in self.stages:
            stage.load_state_dict(meta.get(STAGES_KEY, {}).get(stage.name, {}))
        # per client that keeps a state: the round of its committed one (no tensor of it)
        self.committed = {int(k): int(r) for k, r in meta.get(COMMITTED_KEY, {}).items()}
        self.started = 0.0
        self.scorer: Scorer | None = None

    def rounds(self) -> range:
        """The rounds left to run."""
        return range(self.done + 1, self.cfg.federation.rounds + 1)

    @property
    def tries(self) -> int:
        """Attempts a round may take: one, or more when short rounds are retried."""
        fed = self.cfg.federation
        return 1 + (fed.max_retries if fed.short_round == "retry" else 0)

    def open(self, round_: int, attempt: int = 0) -> Intake:
        """Step 1: the attempt's cohort, its downloads, and an intake for their replies."""
        if attempt == 0:
            self.started = time.perf_counter()
        cfg, exp = self.cfg, self.exp
        cohort = round_cohort(cfg, round_, len(exp.clients), attempt, self.draws)
        sent = self.algorithm.download(shared(exp, self.global_state), self.server_state)
        seed = derive_seed(cfg.seed, "codec-down", round_, attempt)
        return Intake(
            cohort.tolist(),
            [len(c) for c in exp.clients],
            self.algorithm,
            Downloads(self.algorithm, self.down, sent, seed, round_, self.committed),
            Aggregate(keep_updates=self.algorithm.keeps_updates, population=len(exp.clients)),
            self.up,
            self.stages,
            local_epochs=cfg.train.local_epochs,
            attempt=attempt,
            # from the updates that report their count (none under DP)
            lora=None if self.lora is None else self.lora(),
            committed=self.committed,
            report=self.recorder.progress,
        )

    def receive(self, intake: Intake, client: int, reply: ClientReply) -> bool:
        """Step 3: take in ``client``'s reply; whether it was aggregated."""
        if reply.fresh:
            logging.getLogger("fedpet").warning(
                "fedpet: client %d's state from round %d was gone; it started afresh",
                client,
                self.committed.get(client, 0),
            )
        return intake.receive(client, reply)

    def enough(self, intake: Intake) -> bool:
        """Whether the attempt aggregated ``federation.min_clients_per_round`` updates."""
        return intake.aggregate.num_clients >= self.cfg.federation.min_clients_per_round

    def close(self, round_: int, attempts: list[Intake]) -> None:
        """Step 4: release, update, commit, record and checkpoint the round."""
        final = attempts[-1]
        skipped = not self.enough(final)
        released: dict[str, float] = {}
        for stage in self.stages:
            released |= stage.release(None if skipped else final.aggregate, final.tally, round_)
        updated = None
        if not skipped:
            updated, self.server_state = self.algorithm.server_update(
                shared(self.exp, self.global_state), self.server_state, final.aggregate
            )
            self.global_state = {**self.global_state, **updated}
            self.committed |= dict.fromkeys(final.kept, round_)
        scores = None
        if self.scorer is not None and self.recorder.scores(round_):
            scores = self.scorer(self.global_state, self.committed)
        self.exp.load_state(self.global_state)
        record = round_record(round_, attempts, skipped, self.started, updated)
        record.extra.update(released)
        meta = self.draws.checkpoint()  # the server's DP secret, to draw the same on resume
        meta[STAGES_KEY] = {stage.name: stage.state_dict() for stage in self.stages}
        if self.committed:
            meta[COMMITTED_KEY] = {str(k): r for k, r in sorted(self.committed.items())}
        saved = {"server": self.server_state}
        self.recorder.end_round(record, self.global_state, saved, meta, scores)
        self.done = round_
