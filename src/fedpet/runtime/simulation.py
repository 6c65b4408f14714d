"""The in-process simulation runtime (the default; no server to start).

One shared backbone serves every simulated client; a seeded cohort loop runs the rounds
through the algorithm object; every payload's bytes are counted by the codecs; the recorder
evaluates and checkpoints after each round. Injected faults (:mod:`fedpet.runtime.faults`)
meet the server's policy: a deadline, update validation, a minimum number of successful
clients, and a retry with a fresh cohort or a skipped round when too few succeed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fedpet.algorithms import Aggregate, Algorithm, get_algorithm
from fedpet.codecs import Codec, get_codec
from fedpet.experiment import Experiment
from fedpet.rundir import Checkpoint
from fedpet.runtime.faults import ClientFailure, FailingHook, attack, local_steps, plan_faults
from fedpet.runtime.recorder import Recorder, RoundRecord
from fedpet.seeding import derive_seed
from fedpet.state import Schema, TrainableState, extract, load_, schema, subtract
from fedpet.validation import receive_update


def sample_cohort(
    seed: int, round_: int, num_clients: int, per_round: int, attempt: int = 0
) -> np.ndarray:
    """Uniform sample without replacement of the round's clients, seeded by (seed, round).

    A retried round (``attempt`` > 0) draws a fresh cohort from (seed, round, attempt).
    """
    keys = (round_,) if attempt == 0 else (round_, attempt)
    rng = np.random.default_rng(derive_seed(seed, "sampling", *keys))
    return np.sort(rng.choice(num_clients, size=per_round, replace=False))


@dataclass
class Attempt:
    """What one attempt at a round gathered from its cohort."""

    clients: list[int]
    aggregate: Aggregate
    bytes_down: int
    bytes_up: int = 0
    examples: int = 0
    trained: int = 0
    loss_sum: float = 0.0
    failed: list[dict[str, object]] = field(default_factory=list)
    late: list[dict[str, object]] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)


def run_attempt(
    exp: Experiment,
    algorithm: Algorithm,
    codecs: tuple[Codec, Codec],
    global_state: TrainableState,
    layout: Schema,
    round_: int,
    attempt: int,
) -> Attempt:
    """Send the global state to a sampled cohort, train each client, gather valid updates."""
    cfg = exp.cfg
    up, down = codecs
    fed, train = cfg.federation, cfg.train
    cohort = sample_cohort(cfg.seed, round_, len(exp.clients), fed.clients_per_round, attempt)
    payload = down.encode(global_state)
    received = down.decode(payload, layout)
    result = Attempt(
        cohort.tolist(),
        Aggregate(global_state, keep_updates=algorithm.keeps_updates),
        bytes_down=len(payload) * len(cohort),
    )
    for k in result.clients:
        steps = local_steps(len(exp.clients[k]), train.batch_size, train.local_epochs)
        faults = plan_faults(cfg, round_, attempt, k, steps)
        if fed.round_deadline is not None and faults.seconds > fed.round_deadline:
            reason = f"needs {faults.seconds:g} s, round_deadline is {fed.round_deadline:g} s"
            result.late.append({"client": k, "attempt": attempt, "reason": reason})
            continue
        hook = algorithm.client_hook(received)
        if faults.fail_at_step is not None:
            hook = FailingHook(hook, faults.fail_at_step)
        try:
            trained = exp.train_client(k, received, hook, derive_seed(cfg.seed, "train", round_, k))
        except ClientFailure as exc:
            result.failed.append({"client": k, "attempt": attempt, "reason": str(exc)})
            continue
        result.examples += trained.num_examples * train.local_epochs
        result.trained += trained.num_examples
        result.loss_sum += trained.loss * trained.num_examples
        update = subtract(trained.state, received)
        if faults.malicious:
            update = attack(update, cfg.faults.attack, cfg.faults.attack_norm)
        payload_up = up.encode(update)
        result.bytes_up += len(payload_up)
        received_update, problem = receive_update(up, payload_up, layout, fed.max_update_norm)
        if received_update is None:
            result.rejected.append({"client": k, "attempt": attempt, "reason": problem})
            continue
        result.aggregate.add(received_update, float(trained.num_examples))
    return result


def run_simulation(exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None) -> None:
    """Run ``federation.rounds`` rounds; the recorder evaluates, logs and checkpoints each.

    With ``resume``, continue after its round from its global and server state: every random
    choice derives from (seed, round, client), so the rest of the run is the same as if it
    had never stopped.
    """
    cfg = exp.cfg
    fed = cfg.federation
    algorithm = get_algorithm(cfg.algorithm)
    codecs = (get_codec(cfg.codec.up), get_codec(cfg.codec.down))
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
    tries = 1 + (fed.max_retries if fed.short_round == "retry" else 0)
    for rnd in range(first, fed.rounds + 1):
        start = time.perf_counter()
        attempts: list[Attempt] = []
        while len(attempts) < tries:
            attempts.append(
                run_attempt(exp, algorithm, codecs, global_state, layout, rnd, len(attempts))
            )
            if attempts[-1].aggregate.num_clients >= fed.min_clients_per_round:
                break
        final = attempts[-1]
        skipped = final.aggregate.num_clients < fed.min_clients_per_round
        if not skipped:
            global_state, server_state = algorithm.server_update(
                global_state, server_state, final.aggregate
            )
        load_(exp.params, global_state)
        record = _record(rnd, attempts, skipped, start)
        recorder.end_round(record, global_state, {"server": server_state})


def _record(round_: int, attempts: list[Attempt], skipped: bool, start: float) -> RoundRecord:
    trained = sum(a.trained for a in attempts)
    return RoundRecord(
        round=round_,
        train_loss=sum(a.loss_sum for a in attempts) / trained if trained else None,
        examples=sum(a.examples for a in attempts),
        bytes_up=sum(a.bytes_up for a in attempts),
        bytes_down=sum(a.bytes_down for a in attempts),
        train_seconds=time.perf_counter() - start,
        clients=attempts[-1].clients,
        aggregated=attempts[-1].aggregate.num_clients,
        attempts=len(attempts),
        skipped=skipped,
        failed=[x for a in attempts for x in a.failed],
        late=[x for a in attempts for x in a.late],
        rejected=[x for a in attempts for x in a.rejected],
    )
