"""Starting and resuming one run: what ``fedpet run`` does, and each run of a study."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpet.algorithms import get_algorithm
from fedpet.config import Config, load_yaml
from fedpet.configure import build_config
from fedpet.data.describe import describe_partition, plot_partition
from fedpet.devices import reset_device_peak
from fedpet.errors import FedpetError
from fedpet.experiment import Experiment, prepare
from fedpet.memory import map_large_blocks, reset_peak
from fedpet.model import Backbones
from fedpet.progress import RoundProgress
from fedpet.rundir import (
    Checkpoint,
    RunDir,
    check_out_dir,
    finished_summary,
    keep_metrics,
    load_checkpoint,
    storage_errors,
)
from fedpet.runtime.centralized import run_centralized
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.simulation import run_simulation

Runner = Callable[[Experiment, Recorder, Checkpoint | None], None]


def start_run(
    cfg: Config,
    out: Path,
    overwrite: bool = False,
    backbones: Backbones | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Check ``out``, load everything once, write the run directory, train; the summary.

    ``runner`` replaces the configured runtime (a Flower ServerApp passes its grid's).
    """
    check_runner(cfg, runner)
    check_out_dir(out, overwrite)
    map_large_blocks()
    reset_peak()  # the run's memory figure starts here, whatever ran before in this process
    reset_device_peak(cfg.device)
    exp = prepare(cfg, backbones)
    run = RunDir(out)
    run.create(overwrite)
    run.write_config(cfg)
    info = get_algorithm(cfg.algorithm).client_info
    report = describe_partition(exp.task, exp.clients, cfg, info)
    run.write_json("partition.json", report)
    with storage_errors(out):
        plot_partition(report, out)
    return train(exp, out, runner=runner)


def check_runner(cfg: Config, runner: Runner | None) -> None:
    """A deployment (``runtime: flower``) runs only in the ServerApp ``flwr run`` starts."""
    if cfg.runtime == "flower" and runner is None:
        raise FedpetError(
            "runtime = 'flower' is a Flower deployment: start or resume it with flwr run "
            "(README, Across machines), or use --runtime simulation or flower-sim"
        )


def run_config(out: Path) -> Config:
    """The config a run directory was started with."""
    return build_config(load_yaml(out / "config.yaml"))


def resume_run(
    out: Path, backbones: Backbones | None = None, runner: Runner | None = None
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
    return train(prepare(cfg, backbones), out, resume=checkpoint, runner=runner)


def total_rounds(cfg: Config) -> int:
    """Rounds of a federated run, epochs of a centralized one."""
    return cfg.train.epochs if cfg.centralized else cfg.federation.rounds


def train(
    exp: Experiment, out: Path, resume: Checkpoint | None = None, runner: Runner | None = None
) -> dict[str, Any]:
    """Run every round (or epoch) under a progress bar; write and return the summary."""
    cfg = exp.cfg
    unit = "epoch" if cfg.centralized else "round"
    with RoundProgress(total_rounds(cfg), exp.task.metric, unit) as bar:
        recorder = Recorder(exp, RunDir(out), on_round=bar.update)
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
