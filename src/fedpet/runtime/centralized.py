"""Centralized training, the baseline the federation is compared with.

The same method and local-training function run on the union of the training data, with one
optimizer over ``train.epochs`` epochs, evaluated after each epoch.
"""

from __future__ import annotations

import time

from fedpet.algorithms import PlainTraining
from fedpet.client import local_train
from fedpet.experiment import Experiment
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import extract


def run_centralized(exp: Experiment, recorder: Recorder) -> None:
    """Train on all training examples; each epoch is logged as a round.

    The data order and dropout are seeded exactly as the simulation seeds client 0 of round 1,
    so one epoch here equals one round of a one-client federation.
    """
    cfg = exp.cfg
    indices = exp.clients[0]
    start = time.perf_counter()

    def end_epoch(epoch: int, loss: float) -> None:
        nonlocal start
        record = RoundRecord(
            round=epoch,
            train_loss=loss / len(indices),
            examples=len(indices),
            bytes_up=0,
            bytes_down=0,
            train_seconds=time.perf_counter() - start,
            clients=[0],
        )
        recorder.end_round(record, extract(exp.params), {})
        start = time.perf_counter()

    local_train(
        exp.model,
        exp.params,
        exp.head_names,
        exp.train,
        indices,
        cfg.train,
        PlainTraining(),
        derive_seed(cfg.seed, "train", 1, 0),
        cfg.train.epochs,
        on_epoch=end_epoch,
    )
