"""The server's half of a round, written once; every runtime drives it.

The round protocol, in order:

1. :meth:`ServerHalf.open` samples the attempt's cohort, opens the stages and readies each
   client's download (its view of the algorithm's download, encoded);
2. the runtime carries each download to its client, whose
   :class:`~fedpet.runtime.client_half.ClientHalf` trains and replies;
3. :meth:`ServerHalf.receive` takes a reply in: it decodes it, passes it through the
   stages' server halves (validation, DP's clip) and aggregates it, and stages the
   client's new state;
4. :meth:`ServerHalf.close` ends the round: unless too few were aggregated (a skipped
   round), the stages release the aggregate (DP's noise) and the algorithm updates the
   global and server state; the client states of aggregated updates are committed; the
   recorder evaluates, logs and checkpoints.

The simulation runtime repeats 1-3 for a retry with a fresh cohort when too few succeed;
the Flower runtime turns 1 and 3 into messages.
"""

from __future__ import annotations

import time

from fedpet.algorithms import Aggregate, get_algorithm
from fedpet.codecs import get_codec
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import server_draws
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_states import ClientStates
from fedpet.runtime.pipeline import stages_for, withholds_stats
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.rounds import (
    ClientReply,
    Downloads,
    Intake,
    lora_error,
    round_cohort,
    round_record,
    starting_state,
)
from fedpet.seeding import derive_seed
from fedpet.state import TrainableState, load_


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
        self.exp, self.recorder, self.cfg, self.secure = exp, recorder, cfg, secure
        self.algorithm = get_algorithm(cfg.algorithm)
        self.up, self.down = get_codec(cfg.codec.up), get_codec(cfg.codec.down)
        self.draws = server_draws(cfg, resume.state if resume is not None else {})
        self.stages = stages_for(cfg, self.draws)
        self.global_state, self.server_state, self.done = starting_state(
            exp, self.algorithm, recorder, resume
        )
        for stage in self.stages:
            stage.restore(resume.state if resume is not None else {})
        keep = self.algorithm.stateful_clients or any(s.keeps_client_memory for s in self.stages)
        self.states = ClientStates(recorder.run.path, self.done) if keep else None
        self.started = 0.0

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
        if self.states is not None:
            self.states.discard()  # an abandoned attempt's clients keep the state they had
        for stage in self.stages:
            stage.open()
        cohort = round_cohort(cfg, round_, len(exp.clients), attempt, self.draws)
        sent = self.algorithm.download(self.global_state, self.server_state)
        seed = derive_seed(cfg.seed, "codec-down", round_, attempt)
        return Intake(
            cohort.tolist(),
            [len(c) for c in exp.clients],
            self.algorithm,
            Downloads(self.algorithm, self.down, sent, seed),
            Aggregate(keep_updates=self.algorithm.keeps_updates, population=len(exp.clients)),
            self.up,
            self.stages,
            local_epochs=cfg.train.local_epochs,
            attempt=attempt,
            # the error is computed from single updates: none under secure aggregation or DP
            lora=None if self.secure or withholds_stats(self.stages) else lora_error(exp),
            report=self.recorder.progress,
        )

    def saved(self, client: int) -> TrainableState:
        """What ``client`` kept from earlier rounds (empty if the run keeps nothing)."""
        return self.states.load(client) if self.states is not None else {}

    def receive(
        self, intake: Intake, client: int, reply: ClientReply, kept: TrainableState | None = None
    ) -> bool:
        """Step 3: take in ``client``'s reply; stage ``kept`` as its state if aggregated."""
        accepted = intake.receive(client, reply)
        if accepted and self.states is not None and kept is not None:
            self.states.stage(client, kept)
        return accepted

    def enough(self, intake: Intake) -> bool:
        """Whether the attempt aggregated ``federation.min_clients_per_round`` updates."""
        return intake.aggregate.num_clients >= self.cfg.federation.min_clients_per_round

    def close(self, round_: int, attempts: list[Intake]) -> None:
        """Step 4: release, update, commit, record and checkpoint the round."""
        final = attempts[-1]
        skipped = not self.enough(final)
        if not skipped:
            for stage in self.stages:
                stage.release(final.aggregate, round_)
            self.global_state, self.server_state = self.algorithm.server_update(
                self.global_state, self.server_state, final.aggregate
            )
        if self.states is not None:
            self.states.commit([] if skipped else final.accepted, round_)
        load_(self.exp.params, self.global_state)
        record = round_record(round_, attempts, skipped, self.started)
        meta = self.draws.checkpoint()  # the server's DP secret, to draw the same on resume
        for stage in self.stages:
            extra, stage_meta = stage.end_round()
            record.extra.update(extra)
            meta.update(stage_meta)
        saved = {"server": self.server_state}
        self.recorder.end_round(record, self.global_state, saved, meta)
        self.done = round_
