"""Per-round bookkeeping shared by the runtimes: totals, best round, metrics line, checkpoint."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpet.client import evaluate
from fedpet.config import Config
from fedpet.devices import device_peak_mb
from fedpet.experiment import Experiment
from fedpet.memory import tree_peak_mb
from fedpet.privacy.release import ROUND_WITHHELD, SUMMARY_WITHHELD, dp_summary, released
from fedpet.progress import RoundEnd, Watcher
from fedpet.rundir import Checkpoint, RunDir
from fedpet.runtime.budget import check_round, client_bytes
from fedpet.runtime.client_tests import (
    CLIENTS_CSV,
    ClientScore,
    client_rows,
    csv_text,
    read_scores,
    score_figures,
)
from fedpet.runtime.counts import RoundCounts, summary_totals, totalled
from fedpet.state import TrainableState

TOTALS = ("rounds", "train_seconds", "eval_seconds", "skipped", "retries")
"""The running totals besides the counters' (:func:`~fedpet.runtime.counts.totalled`).

``rounds`` is the last round done; the others sum over the rounds.
"""


def total_rounds(cfg: Config) -> int:
    """Rounds of a federated run, epochs of a centralized one."""
    return cfg.train.epochs if cfg.centralized else cfg.federation.rounds


CLASSIFICATION = ("accuracy", "macro_f1", "mcc", "f1")
"""The test metrics of a classifier; a generative model's others are added to the summary."""


def majority(labels: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent label."""
    return float(np.bincount(labels).max() / len(labels))


@dataclass
class RoundRecord:
    """What one round (or centralized epoch) did, before evaluation.

    ``clients`` is the last attempt's cohort, of which ``aggregated`` were aggregated; a
    ``skipped`` round left the global state as it was. ``extra`` holds the stages' own
    figures for the metrics line (DP's clip).
    """

    round: int
    counts: RoundCounts
    train_seconds: float
    clients: list[int] = field(default_factory=list)
    aggregated: int = 0
    attempts: int = 1
    skipped: bool = False
    lora_error: float | None = None
    aggregation_error: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Evaluates the global state after each round, keeps the best one, writes the run files.

    Parameters
    ----------
    watcher
        Told of progress within a round, of each round's end (its metrics line) and of the
        summary: the display and the trackers.
    """

    def __init__(self, exp: Experiment, run: RunDir, watcher: Watcher | None = None) -> None:
        self.exp = exp
        self.run = run
        self.watcher = watcher or Watcher()
        self.metric = exp.task.metric
        self.totals: dict[str, float] = dict.fromkeys(TOTALS, 0)
        self.best_round = 0
        self.best_val = float("-inf")
        self.best_state: TrainableState = {}
        self.started = time.perf_counter()
        self.peak_rss_mb = 0.0  # of the processes that ran earlier rounds, and this one's

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: its totals and its best round."""
        self.totals = {**self.totals, **checkpoint.state["totals"]}
        self.best_round = int(checkpoint.state["best_round"])
        self.best_val = float(checkpoint.state["best_val_metric"])
        self.best_state = checkpoint.tensors["best"]
        self.started -= float(checkpoint.state.get("wall_seconds", 0.0))
        self.peak_rss_mb = float(checkpoint.state.get("peak_rss_mb", 0.0))

    def end_round(
        self,
        record: RoundRecord,
        global_state: TrainableState,
        saved: dict[str, TrainableState] | None = None,
        saved_meta: dict[str, Any] | None = None,
        scores: Mapping[int, ClientScore] | None = None,
    ) -> dict[str, float]:
        """Evaluate the model (holding ``global_state``) on validation; log and checkpoint.

        A federated run evaluates every ``federation.eval_every`` rounds and after its last;
        a round it does not evaluate logs no validation figures and cannot be the best round.
        ``saved`` (named tensor groups) and ``saved_meta`` (JSON data) are the runtime's own
        state, checkpointed with the round (e.g. the server algorithm's state). ``scores``
        (every client's, on its local test split) go to ``clients.csv`` and the line.
        """
        cfg = self.exp.cfg
        t0 = time.perf_counter()
        val = {}
        if self.evaluates(record.round):
            exp = self.exp
            val = evaluate(
                exp.model,
                exp.validation,
                cfg.train.eval_batch_size,
                exp.task.num_labels,
                cfg.train.precision,
            )
        eval_seconds = time.perf_counter() - t0
        t = self.totals
        t["rounds"] = record.round
        round_totals = {
            "train_seconds": record.train_seconds,
            "eval_seconds": eval_seconds,
            "skipped": int(record.skipped),
            "retries": record.attempts - 1,
            **totalled(record.counts),
        }
        for name, value in round_totals.items():
            t[name] = t.get(name, 0) + value
        if val and val[self.metric] > self.best_val:
            self.best_round, self.best_val = record.round, val[self.metric]
            self.best_state = {k: v.clone() for k, v in global_state.items()}
        private = cfg.privacy.enabled
        row = {
            "round": record.round,
            **{f"val_{k}": v for k, v in val.items()},
            **record.counts.metrics(private),
            "clients": record.clients,
            "aggregated": record.aggregated,
            "attempts": record.attempts,
            "skipped": record.skipped,
            "train_seconds": record.train_seconds,
            "eval_seconds": eval_seconds,
            **({} if record.lora_error is None else {"lora_aggregation_error": record.lora_error}),
            **(
                {}
                if record.aggregation_error is None
                else {"aggregation_error": record.aggregation_error}
            ),
            **({"epsilon": self.epsilon(record.round)} if private else {}),
            **record.extra,
        }
        if scores:
            self.run.write_text(CLIENTS_CSV, csv_text(client_rows(self.exp, scores)))
            row |= score_figures(scores)
        row = released(cfg, row, ROUND_WITHHELD)
        self.run.append_metrics(row)
        self.peak_rss_mb = max(self.peak_rss_mb, tree_peak_mb())
        tensors = {"global": global_state, "best": self.best_state}
        tensors.update({name: group for name, group in (saved or {}).items() if group})
        self.run.write_checkpoint(
            tensors,
            {
                "round": record.round,
                "best_round": self.best_round,
                "best_val_metric": self.best_val,
                "totals": t,
                "wall_seconds": time.perf_counter() - self.started,
                "peak_rss_mb": self.peak_rss_mb,
                **(saved_meta or {}),
            },
        )
        unit = "epoch" if cfg.centralized else "round"
        total = total_rounds(cfg)
        end = RoundEnd(record.round, total, unit, self.metric, row, self.best_round, self.best_val)
        self.watcher.round_end(end)
        check_round(cfg, record.round, record.counts.bytes_up + record.counts.bytes_down)
        return val

    def progress(self, done: int, total: int) -> None:
        """Within a round: ``done`` of ``total`` clients replied, or steps of an epoch."""
        self.watcher.progress(done, total)

    def evaluates(self, round_: int) -> bool:
        """Whether the global state after ``round_`` is evaluated on validation."""
        cfg = self.exp.cfg
        fed = cfg.federation
        return cfg.centralized or round_ % fed.eval_every == 0 or round_ >= fed.rounds

    def scores(self, round_: int) -> bool:
        """Whether every client is scored on its local test split after ``round_``."""
        return bool(self.exp.client_tests) and self.evaluates(round_)

    def epsilon(self, rounds: int) -> float:
        """DP's epsilon (at ``privacy.delta``) spent by ``rounds`` rounds."""
        from fedpet.privacy.accountant import epsilon

        cfg = self.exp.cfg
        z = cfg.privacy.noise_multiplier
        assert z is not None, "the config is resolved"
        fed = cfg.federation
        return epsilon(cfg.privacy, len(self.exp.clients), fed.clients_per_round, z, rounds)

    def finish(self) -> dict[str, Any]:
        """Test the best round's state; write and return ``summary.json``."""
        exp, cfg, t = self.exp, self.exp.cfg, self.totals
        exp.load_state(self.best_state)
        train = cfg.train
        test = evaluate(
            exp.model, exp.test, train.eval_batch_size, exp.task.num_labels, train.precision
        )
        summary: dict[str, Any] = {
            "task": cfg.data.task,
            "method": cfg.method.name,
            "model": cfg.model,
            "seed": cfg.seed,
            "centralized": cfg.centralized,
            "partition": None if cfg.centralized else cfg.data.partition,
            "alpha": None if cfg.centralized else cfg.data.alpha,
            "algorithm": None if cfg.centralized else cfg.algorithm.name,
            "codec_up": cfg.codec.up,
            "codec_down": cfg.codec.down,
            "clients": len(exp.clients),
            "clients_per_round": 1 if cfg.centralized else cfg.federation.clients_per_round,
            "rounds_completed": t["rounds"],
            "metric_name": self.metric,
            "best_round": self.best_round,
            "best_val_metric": self.best_val,
            "test_metric": test[self.metric],
            "test_accuracy": test.get("accuracy"),  # None for open generative answers
            "test_macro_f1": test.get("macro_f1"),
            **{f"test_{k}": v for k, v in test.items() if k not in CLASSIFICATION},
            # the accuracy of always predicting the test split's most frequent label
            "test_majority": majority(exp.test.labels) if exp.task.num_labels else None,
            "trainable_params": exp.trainable_params,
            "total_params": exp.total_params,
            **summary_totals(t, cfg.privacy.enabled),
            "rounds_skipped": t["skipped"],
            "rounds_retried": t["retries"],
            "train_seconds": t["train_seconds"],
            "eval_seconds": t["eval_seconds"],
            "wall_seconds": time.perf_counter() - self.started,
            "peak_rss_mb": max(self.peak_rss_mb, tree_peak_mb()),
            "device": cfg.device,
            "precision": cfg.train.precision,
        }
        clients = self.run.path / CLIENTS_CSV
        if clients.exists():  # the last scored round's, the final state's
            summary |= score_figures(read_scores(clients, self.metric))
        gpu = device_peak_mb(exp.device)
        if gpu is not None:  # of the process that finished the run
            summary["peak_gpu_mb"] = gpu
        if cfg.privacy.enabled:
            epsilon = self.epsilon(int(t["rounds"]))
            summary.update(dp_summary(cfg, epsilon, client_bytes(exp)))
        summary = released(cfg, summary, SUMMARY_WITHHELD)
        self.run.write_json("summary.json", summary)
        self.watcher.finish(summary)
        return summary
