"""Starting and resuming one run: what ``fedpet run`` does, and each run of a study."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedpet.algorithms import get_algorithm
from fedpet.config import Config, load_yaml, to_dict
from fedpet.configure import build_config
from fedpet.data.describe import describe_partition, plot_partition
from fedpet.devices import reset_device_peak
from fedpet.errors import FedpetError
from fedpet.experiment import Experiment, prepare
from fedpet.files import storage_errors
from fedpet.memory import map_large_blocks, reset_peak
from fedpet.model import Backbones
from fedpet.privacy.release import released_partition
from fedpet.progress import RunDisplay, RunStart, Watcher, Watchers
from fedpet.rundir import (
    Checkpoint,
    RunDir,
    check_out_dir,
    checkpoint_round,
    finished_summary,
    keep_metrics,
    load_checkpoint,
)
from fedpet.runtime.budget import check_plan
from fedpet.runtime.centralized import run_centralized
from fedpet.runtime.parallel import choose
from fedpet.runtime.recorder import Recorder, total_rounds
from fedpet.runtime.simulation import run_simulation

Runner = Callable[[Experiment, Recorder, Checkpoint | None], None]


def start_run(
    cfg: Config,
    out: Path,
    overwrite: bool = False,
    backbones: Backbones | None = None,
    runner: Runner | None = None,
    watchers: Sequence[Watcher] | None = None,
) -> dict[str, Any]:
    """Check ``out``, load everything once, write the run directory, train; the summary.

    ``runner`` replaces the configured runtime (a Flower ServerApp passes its grid's).
    ``watchers`` are told of the run's progress (default: the display of round lines).
    """
    check_runner(cfg, runner)
    check_out_dir(out, overwrite)
    map_large_blocks()
    reset_peak()  # the run's memory figure starts here, whatever ran before in this process
    reset_device_peak(cfg.device)
    exp = choose(prepare(cfg, backbones))
    check_plan(exp)
    run = RunDir(out)
    run.create(overwrite)
    run.write_config(exp.cfg)  # with what the data decided (the natural partition's clients)
    info = get_algorithm(cfg.algorithm).client_info
    report = describe_partition(exp.task, exp.clients, cfg, info, exp.client_tests)
    run.write_json("partition.json", released_partition(cfg, report))
    if not cfg.privacy.enabled:  # the plots show every client's size and labels
        with storage_errors(out):
            plot_partition(report, out)
    return train(exp, out, runner=runner, watchers=watchers)


def check_runner(cfg: Config, runner: Runner | None) -> None:
    """A deployment (``runtime: flower``) runs only in the ServerApp ``flwr run`` starts."""
    if cfg.runtime == "flower" and runner is None:
        raise FedpetError(
            "runtime = 'flower' is a Flower deployment: start or resume it with flwr run "
            "(docs/concepts/flower.md), or use --runtime simulation or flower-sim"
        )


def run_config(out: Path) -> Config:
    """The config a run directory was started with."""
    return build_config(load_yaml(out / "config.yaml"))


def resume_run(
    out: Path,
    backbones: Backbones | None = None,
    runner: Runner | None = None,
    watchers: Sequence[Watcher] | None = None,
) -> dict[str, Any]:
    """Continue the run in ``out`` after its last checkpointed round; the summary.

    A finished run (it has its ``summary.json``) is left exactly as it is: its summary is
    returned and nothing is trained, evaluated or written.
    """
    cfg = run_config(out)
    check_runner(cfg, runner)
    finished = finished_summary(out)
    if finished is not None:
        return finished
    checkpoint = load_checkpoint(out)
    map_large_blocks()
    reset_peak()
    reset_device_peak(cfg.device)
    keep_metrics(out, checkpoint.round)
    exp = prepare(cfg, backbones)
    return train(exp, out, resume=checkpoint, runner=runner, watchers=watchers)


def extend_run(out: Path, rounds: int) -> None:
    """Plan the run in ``out`` for ``rounds`` rounds (epochs, if centralized) in all.

    The run then continues with :func:`resume_run`: its next rounds are those a run planned
    for ``rounds`` from the start would have had (every random choice derives from the seed,
    the round and the client). Refused where the plan depends on the number of rounds: a
    centralized learning-rate schedule over all epochs, and DP noise calibrated to a target
    epsilon for the planned rounds.
    """
    cfg = run_config(out)
    done = checkpoint_round(out)
    flag = "--epochs" if cfg.centralized else "--rounds"
    if rounds <= done:
        raise FedpetError(
            f"{flag} {rounds} is not allowed: the run in {out} has done {done}; give more"
        )
    if cfg.centralized and cfg.train.schedule != "constant":
        raise FedpetError(
            f"{flag} cannot extend {out}: its {cfg.train.schedule} learning-rate schedule "
            "spans the planned epochs, so more epochs would change the ones already trained"
        )
    if cfg.privacy.enabled and cfg.privacy.target_epsilon is not None:
        raise FedpetError(
            f"{flag} cannot extend {out}: its DP noise was calibrated to epsilon "
            f"{cfg.privacy.target_epsilon} over {total_rounds(cfg)} rounds"
        )
    if cfg.centralized:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=rounds))
    else:
        fed = dataclasses.replace(cfg.federation, rounds=rounds)
        cfg = dataclasses.replace(cfg, federation=fed)
    cfg = build_config(to_dict(cfg))  # the owners' checks, for the new plan
    RunDir(out).write_config(cfg)
    with storage_errors(out):
        (out / "summary.json").unlink(missing_ok=True)


def run_start(exp: Experiment, out: Path, done: int) -> RunStart:
    """What the watchers are told as the run starts."""
    cfg = exp.cfg
    return RunStart(
        task=cfg.data.task,
        model=cfg.model,
        method=cfg.method.name,
        trainable_params=exp.trainable_params,
        total_params=exp.total_params,
        clients=len(exp.clients),
        clients_per_round=1 if cfg.centralized else cfg.federation.clients_per_round,
        rounds=total_rounds(cfg),
        unit="epoch" if cfg.centralized else "round",
        algorithm=None if cfg.centralized else cfg.algorithm.name,
        device=cfg.device,
        precision=cfg.train.precision,
        out=str(out),
        done=done,
        config=to_dict(cfg),
    )


def train(
    exp: Experiment,
    out: Path,
    resume: Checkpoint | None = None,
    runner: Runner | None = None,
    watchers: Sequence[Watcher] | None = None,
) -> dict[str, Any]:
    """Run every round (or epoch), telling the watchers; write and return the summary."""
    cfg = exp.cfg
    watcher = Watchers([RunDisplay()] if watchers is None else watchers)
    try:
        watcher.start(run_start(exp, out, 0 if resume is None else resume.round))
        recorder = Recorder(exp, RunDir(out), watcher)
        if runner is not None:
            runner(exp, recorder, resume)
        elif cfg.centralized:
            run_centralized(exp, recorder, resume=resume)
        elif cfg.runtime == "flower-sim":
            from fedpet.runtime.flower import run_flower_simulation  # imports Flower and Ray

            run_flower_simulation(exp, recorder, resume=resume)
        else:
            run_simulation(exp, recorder, resume=resume)
        return recorder.finish()
    finally:
        watcher.close()
