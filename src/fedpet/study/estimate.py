"""``fedpet study --dry-run``: the planned runs, and their time from a measured step.

For each distinct (task, model, method, lengths, batch sizes, precision, device) of the
study, one experiment is prepared and timed on this machine: its setup, a few training
steps after a warm-up, and an evaluation batch. Each run's time is then its number of
training steps and evaluated examples at those speeds, plus the setup.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpet.algorithms import PlainTraining
from fedpet.client import LocalTraining, evaluate
from fedpet.config import Config
from fedpet.data.batching import Encoded
from fedpet.experiment import prepare
from fedpet.model import Backbones
from fedpet.progress import duration
from fedpet.rundir import finished_summary
from fedpet.runtime.recorder import total_rounds
from fedpet.study.runner import entries
from fedpet.study.spec import PlannedRun, Study, plan

STEPS = 6  # timed training steps, after as many warm-up steps
EVAL = 128  # timed validation examples


@dataclass(frozen=True)
class Speed:
    """Measured on this machine: seconds to set a run up, per step, per evaluated example."""

    setup: float
    step: float
    eval_example: float
    train_size: int
    eval_sizes: tuple[int, int]  # validation, test


def speed_key(cfg: Config) -> tuple[object, ...]:
    """What a step's time depends on: runs sharing it share one measurement."""
    d, t = cfg.data, cfg.train
    sizes = (d.max_train_samples, d.train_fraction, d.max_eval_samples)
    return (d.task, cfg.model, cfg.method.name, d.max_length, t.batch_size, t.precision, *sizes)


def measure(cfg: Config, backbones: Backbones) -> Speed:
    """Prepare ``cfg``'s experiment and time a few steps and an evaluation batch."""
    began = time.perf_counter()
    exp = prepare(cfg, backbones)
    setup = time.perf_counter() - began
    rng = np.random.default_rng(0)
    size = min(len(exp.train), 2 * STEPS * cfg.train.batch_size)
    chosen = np.sort(rng.choice(len(exp.train), size=size, replace=False))
    half = len(chosen) // 2
    seconds = []
    for part in (chosen[:half], chosen[half:]):  # the first is the warm-up
        session = LocalTraining(
            exp.model,
            exp.params,
            exp.head_names,
            exp.train,
            part,
            cfg.train,
            PlainTraining(),
            0,
            1,
        )
        t0 = time.perf_counter()
        session.run_epoch()
        seconds.append(
            (time.perf_counter() - t0) / max(1, math.ceil(len(part) / cfg.train.batch_size))
        )
    n = min(EVAL, len(exp.validation))
    t0 = time.perf_counter()
    evaluate(
        exp.model,
        first(exp.validation, n),
        cfg.train.eval_batch_size,
        exp.task.num_labels,
        cfg.train.precision,
    )
    per_example = (time.perf_counter() - t0) / n
    return Speed(
        setup, seconds[-1], per_example, len(exp.train), (len(exp.validation), len(exp.test))
    )


def first(data: Encoded, n: int) -> Encoded:
    """The first ``n`` examples of ``data``."""
    types = None if data.token_type_ids is None else data.token_type_ids[:n]
    return Encoded(data.input_ids[:n], data.labels[:n], data.pad_id, types)


def run_seconds(cfg: Config, speed: Speed) -> float:
    """One run's estimated wall time at ``speed``."""
    t = cfg.train
    rounds = total_rounds(cfg)
    if cfg.centralized:
        steps = rounds * math.ceil(speed.train_size / t.batch_size)
        evaluations = rounds
    else:
        fed = cfg.federation
        per_client = speed.train_size / fed.clients
        steps = (
            rounds * fed.clients_per_round * t.local_epochs * math.ceil(per_client / t.batch_size)
        )
        evaluations = len(
            [r for r in range(1, rounds + 1) if r % fed.eval_every == 0 or r == rounds]
        )
    examples = evaluations * speed.eval_sizes[0] + speed.eval_sizes[1]
    return speed.setup + steps * speed.step + examples * speed.eval_example


def estimate(runs: list[PlannedRun]) -> tuple[dict[str, float], dict[tuple[object, ...], Speed]]:
    """Each run's estimated seconds, and the speeds measured (one per :func:`speed_key`)."""
    backbones = Backbones()
    speeds: dict[tuple[object, ...], Speed] = {}
    seconds = {}
    for run in runs:
        key = speed_key(run.config)
        if key not in speeds:
            speeds[key] = measure(run.config, backbones)
        seconds[run.name] = run_seconds(run.config, speeds[key])
    return seconds, speeds


def print_plan(study: Study, out: Path) -> None:
    """List the study's runs (done, partial, to do) and the estimated time of those left."""
    runs = plan(study)
    todo = [run for run, run_dir in entries(out, runs) if finished_summary(run_dir) is None]
    print(
        f"{len(runs)} runs planned in {out}; {len(runs) - len(todo)} finished, {len(todo)} to run"
    )
    began = time.perf_counter()
    seconds, speeds = estimate(todo)
    for key, s in speeds.items():
        task, model, method = key[:3]
        print(
            f"measured {task} · {method} on {model}: {1000 * s.step:.0f} ms per step, "
            f"{1000 * s.eval_example:.1f} ms per evaluated example, {s.setup:.1f} s setup"
        )
    for run in runs:
        left = f"~{duration(seconds[run.name])}" if run.name in seconds else "finished"
        print(f"  {run.name}: {left}")
    total = sum(seconds.values())
    print(
        f"estimate: {duration(total)} for the {len(todo)} runs left on this machine "
        f"(measured in {duration(time.perf_counter() - began)}); start it without --dry-run"
    )
