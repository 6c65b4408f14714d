"""The in-process simulation runtime (the default; no server to start).

One shared backbone serves every simulated client; a seeded cohort loop runs the rounds
through the algorithm object; every payload's bytes are counted by the codecs; the recorder
evaluates and checkpoints after each round.
"""

from __future__ import annotations

import time

import numpy as np

from fedpet.algorithms import Aggregate, get_algorithm
from fedpet.codecs import get_codec
from fedpet.experiment import Experiment
from fedpet.rundir import Checkpoint
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import extract, load_, schema, subtract
from fedpet.validation import update_problem


def sample_cohort(seed: int, round_: int, num_clients: int, per_round: int) -> np.ndarray:
    """Uniform sample without replacement of the round's clients, seeded by (seed, round)."""
    rng = np.random.default_rng(derive_seed(seed, "sampling", round_))
    return np.sort(rng.choice(num_clients, size=per_round, replace=False))


def run_simulation(exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None) -> None:
    """Run ``federation.rounds`` rounds; the recorder evaluates, logs and checkpoints each.

    With ``resume``, continue after its round from its global and server state: every random
    choice derives from (seed, round, client), so the rest of the run is the same as if it
    had never stopped.
    """
    cfg = exp.cfg
    algorithm = get_algorithm(cfg.algorithm)
    up, down = get_codec(cfg.codec.up), get_codec(cfg.codec.down)
    global_state = extract(exp.params)
    server_state = algorithm.init_server_state(global_state)
    first = 1
    if resume is not None:
        global_state = resume.tensors["global"]
        server_state = resume.tensors.get("server", server_state)
        load_(exp.params, global_state)
        recorder.restore(resume)
        first = resume.round + 1
    layout = schema(global_state)
    for rnd in range(first, cfg.federation.rounds + 1):
        start = time.perf_counter()
        cohort = sample_cohort(cfg.seed, rnd, len(exp.clients), cfg.federation.clients_per_round)
        payload = down.encode(global_state)
        received = down.decode(payload, layout)
        aggregate = Aggregate(global_state)
        bytes_up, local_examples, loss = 0, 0, 0.0
        rejected: list[dict[str, object]] = []
        for k in cohort.tolist():
            hook = algorithm.client_hook(received)
            result = exp.train_client(k, received, hook, derive_seed(cfg.seed, "train", rnd, k))
            local_examples += result.num_examples
            loss += result.loss * result.num_examples
            payload_up = up.encode(subtract(result.state, received))
            bytes_up += len(payload_up)
            update = up.decode(payload_up, layout)
            problem = update_problem(update, layout, cfg.federation.max_update_norm)
            if problem is not None:
                rejected.append({"client": k, "reason": problem})
                continue
            aggregate.add(update, float(result.num_examples))
        if aggregate.num_clients:
            global_state, server_state = algorithm.server_update(
                global_state, server_state, aggregate
            )
        load_(exp.params, global_state)
        record = RoundRecord(
            round=rnd,
            train_loss=loss / local_examples,
            examples=local_examples * cfg.train.local_epochs,
            bytes_up=bytes_up,
            bytes_down=len(payload) * len(cohort),
            train_seconds=time.perf_counter() - start,
            clients=cohort.tolist(),
            rejected=rejected,
        )
        recorder.end_round(record, global_state, server_state)
