"""Centralized training, the baseline the federation is compared with.

The same method and local-training code run on the union of the training data, with one
optimizer over ``train.epochs`` epochs, evaluated and checkpointed after each epoch (with the
optimizer and random states, so that ``--resume`` continues exactly).
"""

from __future__ import annotations

import time

from fedpet.algorithms import PlainTraining
from fedpet.client import LocalTraining
from fedpet.experiment import Experiment
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_tests import score_clients
from fedpet.runtime.counts import RoundCounts
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import extract, load_


def run_centralized(exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None) -> None:
    """Train on all training examples; each epoch is logged as a round.

    The data order and dropout are seeded exactly as the simulation seeds client 0 of round 1,
    so one epoch here equals one round of a one-client federation.
    """
    cfg = exp.cfg
    indices = exp.clients[0]
    session = LocalTraining(
        exp.model,
        exp.params,
        exp.head_names,
        exp.train,
        indices,
        cfg.train,
        PlainTraining(),
        derive_seed(cfg.seed, "train", 1, 0),
        cfg.train.epochs,
    )
    session.report = recorder.progress
    if resume is not None:
        load_(exp.params, resume.tensors["global"])
        session.restore(resume.tensors["trainer"], resume.state["trainer"])
        recorder.restore(resume)
    while session.epoch < cfg.train.epochs:
        start, before = time.perf_counter(), session.seen
        loss = session.run_epoch()
        record = RoundRecord(
            round=session.epoch,
            counts=RoundCounts(examples=session.seen - before, loss_sum=loss),
            train_seconds=time.perf_counter() - start,
            clients=[0],
            aggregated=1,
        )
        tensors, meta = session.snapshot()
        state = extract(exp.params)
        # with a local test split, the one client is scored on it as a federation's are
        scores = score_clients(exp, state, [0], None) if recorder.scores(record.round) else None
        recorder.end_round(record, state, {"trainer": tensors}, {"trainer": meta}, scores)
