"""The in-process simulation runtime (the default; no server to start).

One shared backbone serves every simulated client; a seeded cohort loop runs the rounds
through the algorithm object; every payload's bytes are counted by the codecs; the recorder
evaluates and checkpoints after each round. Injected faults (:mod:`fedpet.runtime.faults`)
meet the server's policy: a deadline, update validation, a minimum number of successful
clients, and a retry with a fresh cohort or a skipped round when too few succeed.
"""

from __future__ import annotations

from functools import partial

from fedpet.client import planned_steps
from fedpet.cohort import parallel_clients
from fedpet.experiment import Experiment
from fedpet.privacy.randomness import simulated_clients_draws
from fedpet.rundir import Checkpoint
from fedpet.runtime.client_half import ClientHalf, Entry, Tamper, Wrap
from fedpet.runtime.client_store import ClientStore, DiskStore
from fedpet.runtime.client_tests import store_scorer
from fedpet.runtime.faults import ClientFailure, FailingHook, attack, plan_faults
from fedpet.runtime.payloads import ClientReply, Download
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.rounds import Intake
from fedpet.runtime.server_half import ServerHalf


def run_attempt(
    server: ServerHalf, client: ClientHalf, store: ClientStore, round_: int, attempt: int
) -> Intake:
    """One attempt at a round: each sampled client trains from its download and replies.

    A client whose simulated training outlasts ``federation.round_deadline`` is late; one
    whose injected crash strikes is failed; a malicious one sends its attack instead. Up to
    ``federation.parallel_clients`` of the others train together (:mod:`fedpet.cohort`).
    """
    cfg = server.cfg
    fed, train, x = cfg.federation, cfg.train, cfg.faults
    intake = server.open(round_, attempt)
    entries: list[Entry] = []
    for k in intake.clients:
        steps = planned_steps(len(server.exp.clients[k]), train, train.local_epochs)
        faults = plan_faults(cfg, round_, attempt, k, steps)
        if fed.round_deadline is not None and faults.seconds > fed.round_deadline:
            reason = f"needs {faults.seconds:g} s, round_deadline is {fed.round_deadline:g} s"
            intake.lose("late", k, reason)
            continue
        crash = faults.fail_at_step
        wrap = None if crash is None else partial(FailingHook, fail_at_step=crash)
        tamper = partial(attack, kind=x.attack, norm=x.attack_norm) if faults.malicious else None
        entries.append((intake.download(k), k, wrap, tamper))
    together = parallel_clients(cfg)
    for first in range(0, len(entries), together):
        cohort = entries[first : first + together]
        replies: list[ClientReply | Exception]
        if together == 1:
            replies = [run_one(client, store, round_, *cohort[0])]
        else:
            replies = client.run_cohort(round_, store, cohort, failures=(ClientFailure,))
        for (_, k, *_), reply in zip(cohort, replies, strict=True):
            if isinstance(reply, Exception):  # an injected crash (the only one caught)
                intake.lose("failed", k, str(reply))
            else:
                server.receive(intake, k, reply)
    return intake


def run_one(
    client: ClientHalf,
    store: ClientStore,
    round_: int,
    download: Download,
    k: int,
    wrap: Wrap | None,
    tamper: Tamper | None,
) -> ClientReply | ClientFailure:
    """One client's reply, or its injected crash."""
    try:
        return client.run(download, round_, k, store, wrap=wrap, tamper=tamper)
    except ClientFailure as exc:
        return exc


def run_simulation(exp: Experiment, recorder: Recorder, resume: Checkpoint | None = None) -> None:
    """Run ``federation.rounds`` rounds; the recorder evaluates, logs and checkpoints each.

    With ``resume``, continue after its round from its global and server state: every random
    choice derives from (seed, round, client), so the rest of the run is the same as if it
    had never stopped. The clients keep their states in the run directory's ``clients/``.
    """
    server = ServerHalf(exp, recorder, resume)
    run = recorder.run.path
    client = ClientHalf.of(exp, simulated_clients_draws(exp.cfg, run))
    store = DiskStore(run / "clients", run)
    server.scorer = store_scorer(exp, client.algorithm, store)
    for rnd in server.rounds():
        attempts = [run_attempt(server, client, store, rnd, 0)]
        while len(attempts) < server.tries and not server.enough(attempts[-1]):
            attempts.append(run_attempt(server, client, store, rnd, len(attempts)))
        server.close(rnd, attempts)
