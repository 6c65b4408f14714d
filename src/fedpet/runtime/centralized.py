"""Centralized training, the baseline the federation is compared with.

The same method and local-training code run on the union of the training data, with one
optimizer over ``train.epochs`` epochs, evaluated after each epoch.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from fedpet.algorithms import PlainTraining
from fedpet.client import make_optimizer, train_epoch
from fedpet.data.batching import shuffled_batches
from fedpet.experiment import Experiment
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import extract


def run_centralized(exp: Experiment, recorder: Recorder) -> None:
    """Train on all training examples; each epoch is logged as a round.

    The data order and dropout are seeded exactly as the simulation seeds client 0 of round 1,
    so one epoch here equals one round of a one-client federation.
    """
    cfg, train = exp.cfg, exp.cfg.train
    indices = exp.clients[0]
    seed = derive_seed(cfg.seed, "train", 1, 0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = train.epochs * math.ceil(len(indices) / train.batch_size)
    optimizer, scheduler = make_optimizer(exp.params, exp.head_names, train, steps)
    for epoch in range(1, train.epochs + 1):
        start = time.perf_counter()
        batches = shuffled_batches(indices, train.batch_size, rng)
        loss = train_epoch(
            exp.model,
            exp.params,
            exp.train,
            batches,
            optimizer,
            scheduler,
            PlainTraining(),
            train.max_grad_norm,
        )
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
