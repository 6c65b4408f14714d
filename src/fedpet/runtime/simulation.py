"""The in-process simulation runtime (the default; no server to start).

One shared backbone serves every simulated client; a seeded cohort loop runs the rounds
through the algorithm object; every payload's bytes are counted by the codecs; the recorder
evaluates and checkpoints after each round. Injected faults (:mod:`fedpet.runtime.faults`)
meet the server's policy: a deadline, update validation, a minimum number of successful
clients, and a retry with a fresh cohort or a skipped round when too few succeed.
"""

from __future__ import annotations

import time

from fedpet.algorithms import Algorithm, get_algorithm
from fedpet.codecs import Codec, get_codec
from fedpet.experiment import Experiment
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_states import ClientStates
from fedpet.runtime.faults import ClientFailure, FailingHook, attack, local_steps, plan_faults
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.rounds import (
    Downloads,
    Intake,
    client_reply,
    clip_meta,
    local_update,
    release_round,
    round_cohort,
    round_record,
    starting_clip,
    starting_state,
    upload,
)
from fedpet.seeding import derive_seed
from fedpet.state import TrainableState, load_

RESIDUAL = "residual."  # client-state names of the error-feedback residual


def split_state(saved: TrainableState) -> tuple[TrainableState, TrainableState]:
    """A client's saved state as its algorithm state and its error-feedback residual."""
    own = {n: t for n, t in saved.items() if not n.startswith(RESIDUAL)}
    residual = {n.removeprefix(RESIDUAL): t for n, t in saved.items() if n.startswith(RESIDUAL)}
    return own, residual


def run_attempt(
    exp: Experiment,
    algorithm: Algorithm,
    codecs: tuple[Codec, Codec],
    sent: TrainableState,
    round_: int,
    attempt: int,
    states: ClientStates | None,
    clip: float | None = None,
) -> Intake:
    """Send each client of a sampled cohort its view of ``sent``, train it, gather updates.

    ``states`` holds the clients' own states, for algorithms that keep them: the new state
    of each client whose update was aggregated is staged, for the server to commit if the
    round is not skipped. ``clip`` is DP's clip this round, if it adapts.
    """
    cfg = exp.cfg
    up, down = codecs
    fed, train = cfg.federation, cfg.train
    cohort = round_cohort(cfg, round_, len(exp.clients), attempt)
    if states is not None:
        states.discard()  # an abandoned attempt's clients keep the state they had
    intake = Intake.open(exp, algorithm, cohort.tolist(), sent, attempt, clip=clip)
    seed = derive_seed(cfg.seed, "codec-down", round_, attempt)
    downloads = Downloads(algorithm, down, sent, seed)
    for k in intake.clients:
        payload, layout = downloads.payload(k)
        intake.bytes_down += len(payload)
        steps = local_steps(len(exp.clients[k]), train.batch_size, train.local_epochs)
        faults = plan_faults(cfg, round_, attempt, k, steps)
        if fed.round_deadline is not None and faults.seconds > fed.round_deadline:
            reason = f"needs {faults.seconds:g} s, round_deadline is {fed.round_deadline:g} s"
            intake.lose("late", k, reason)
            continue
        own, residual = split_state(states.load(k) if states is not None else {})
        mine = down.decode(payload, layout)
        hook = algorithm.client_hook(mine, own)
        if faults.fail_at_step is not None:
            hook = FailingHook(hook, faults.fail_at_step)
        try:
            update, examples, loss, new_state = local_update(
                exp, algorithm, mine, round_, k, hook, own
            )
        except ClientFailure as exc:
            intake.lose("failed", k, str(exc))
            continue
        if faults.malicious:
            update = attack(update, cfg.faults.attack, cfg.faults.attack_norm)
        sent_update, residual = upload(exp, up, update, round_, k, residual)
        reply = client_reply(cfg, sent_update, examples, loss)
        if intake.receive(k, reply, up, train.local_epochs) and states is not None:
            states.stage(k, {**new_state, **{RESIDUAL + n: t for n, t in residual.items()}})
    return intake


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
    global_state, server_state, done = starting_state(exp, algorithm, recorder, resume)
    keep = algorithm.stateful_clients or cfg.codec.feedback
    states = ClientStates(recorder.run.path, done) if keep else None
    tries = 1 + (fed.max_retries if fed.short_round == "retry" else 0)
    clip = starting_clip(cfg, resume)
    for rnd in range(done + 1, fed.rounds + 1):
        start = time.perf_counter()
        attempts: list[Intake] = []
        while len(attempts) < tries:
            attempts.append(
                run_attempt(
                    exp,
                    algorithm,
                    codecs,
                    algorithm.download(global_state, server_state),
                    rnd,
                    len(attempts),
                    states,
                    clip,
                )
            )
            if attempts[-1].aggregate.num_clients >= fed.min_clients_per_round:
                break
        final = attempts[-1]
        skipped = final.aggregate.num_clients < fed.min_clients_per_round
        next_clip = release_round(cfg, final, clip, rnd, skipped)
        if not skipped:
            global_state, server_state = algorithm.server_update(
                global_state, server_state, final.aggregate
            )
        if states is not None:
            states.commit([] if skipped else final.accepted, rnd)
        load_(exp.params, global_state)
        record = round_record(rnd, attempts, skipped, start)
        meta = clip_meta(cfg, record, clip, next_clip)
        recorder.end_round(record, global_state, {"server": server_state}, meta)
        clip = next_clip
