"""Per-round bookkeeping shared by the runtimes: totals, best round, metrics line, checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedpet.client import evaluate
from fedpet.experiment import Experiment
from fedpet.memory import tree_peak_mb
from fedpet.rundir import Checkpoint, RunDir
from fedpet.state import TrainableState, load_


@dataclass
class Totals:
    """Running totals over the rounds so far."""

    rounds: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    failed: int = 0
    late: int = 0
    rejected: int = 0
    skipped: int = 0
    retries: int = 0


@dataclass
class RoundRecord:
    """What one round (or centralized epoch) did, before evaluation.

    ``failed``, ``late`` and ``rejected`` list the clients whose update was lost (crashed,
    past the deadline, refused by validation) with the reason; ``clients`` is the last
    attempt's cohort, of which ``aggregated`` were aggregated; a ``skipped`` round left the
    global state as it was. ``train_loss`` is None when no client finished training.
    """

    round: int
    train_loss: float | None
    examples: int
    bytes_up: int
    bytes_down: int
    train_seconds: float
    clients: list[int] = field(default_factory=list)
    aggregated: int = 0
    attempts: int = 1
    skipped: bool = False
    failed: list[dict[str, object]] = field(default_factory=list)
    late: list[dict[str, object]] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)
    lora_error: float | None = None
    dp_clip: float | None = None


class Recorder:
    """Evaluates the global state after each round, keeps the best one, writes the run files.

    Parameters
    ----------
    on_round
        Called after each round with (round, validation metric, best round, best validation
        metric), for the progress display.
    """

    def __init__(
        self,
        exp: Experiment,
        run: RunDir,
        on_round: Callable[[int, float, int, float], None] = lambda *_: None,
    ) -> None:
        self.exp = exp
        self.run = run
        self.on_round = on_round
        self.metric = exp.task.metric
        self.totals = Totals()
        self.best_round = 0
        self.best_val = float("-inf")
        self.best_state: TrainableState = {}
        self.started = time.perf_counter()
        self.peak_rss_mb = 0.0  # of the processes that ran earlier rounds, and this one's

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: its totals and its best round."""
        self.totals = Totals(**checkpoint.state["totals"])
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
    ) -> dict[str, float]:
        """Evaluate the model (holding ``global_state``) on validation; log and checkpoint.

        ``saved`` (named tensor groups) and ``saved_meta`` (JSON data) are the runtime's own
        state, checkpointed with the round (e.g. the server algorithm's state).
        """
        cfg = self.exp.cfg
        t0 = time.perf_counter()
        val = evaluate(
            self.exp.model, self.exp.validation, cfg.train.eval_batch_size, self.exp.task.num_labels
        )
        eval_seconds = time.perf_counter() - t0
        t = self.totals
        t.rounds = record.round
        t.bytes_up += record.bytes_up
        t.bytes_down += record.bytes_down
        t.examples += record.examples
        t.train_seconds += record.train_seconds
        t.failed += len(record.failed)
        t.late += len(record.late)
        t.rejected += len(record.rejected)
        t.skipped += int(record.skipped)
        t.retries += record.attempts - 1
        t.eval_seconds += eval_seconds
        if val[self.metric] > self.best_val:
            self.best_round, self.best_val = record.round, val[self.metric]
            self.best_state = {k: v.clone() for k, v in global_state.items()}
        private = cfg.privacy.enabled
        self.run.append_metrics(
            {
                "round": record.round,
                **{f"val_{k}": v for k, v in val.items()},
                # statistics of the clients' own data, which DP's noise does not cover
                **(
                    {}
                    if private
                    else {"train_loss": record.train_loss, "examples": record.examples}
                ),
                "bytes_up": record.bytes_up,
                "bytes_down": record.bytes_down,
                "clients": record.clients,
                "aggregated": record.aggregated,
                "attempts": record.attempts,
                "skipped": record.skipped,
                "failed": record.failed,
                "late": record.late,
                "rejected": record.rejected,
                "train_seconds": record.train_seconds,
                "eval_seconds": eval_seconds,
                **(
                    {}
                    if record.lora_error is None
                    else {"lora_aggregation_error": record.lora_error}
                ),
                **(
                    {"epsilon": self.epsilon(record.round), "dp_clip": record.dp_clip}
                    if private
                    else {}
                ),
            }
        )
        self.peak_rss_mb = max(self.peak_rss_mb, tree_peak_mb())
        tensors = {"global": global_state, "best": self.best_state}
        tensors.update({name: group for name, group in (saved or {}).items() if group})
        self.run.write_checkpoint(
            tensors,
            {
                "round": record.round,
                "best_round": self.best_round,
                "best_val_metric": self.best_val,
                "totals": vars(t),
                "wall_seconds": time.perf_counter() - self.started,
                "peak_rss_mb": self.peak_rss_mb,
                **(saved_meta or {}),
            },
        )
        self.on_round(record.round, val[self.metric], self.best_round, self.best_val)
        return val

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
        load_(exp.params, self.best_state)
        test = evaluate(exp.model, exp.test, cfg.train.eval_batch_size, exp.task.num_labels)
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
            "rounds_completed": t.rounds,
            "metric_name": self.metric,
            "best_round": self.best_round,
            "best_val_metric": self.best_val,
            "test_metric": test[self.metric],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "trainable_params": exp.trainable_params,
            "total_params": exp.total_params,
            "bytes_up_total": t.bytes_up,
            "bytes_down_total": t.bytes_down,
            "clients_failed": t.failed,
            "clients_late": t.late,
            "updates_rejected": t.rejected,
            "rounds_skipped": t.skipped,
            "rounds_retried": t.retries,
            "train_seconds": t.train_seconds,
            "eval_seconds": t.eval_seconds,
            "wall_seconds": time.perf_counter() - self.started,
            "peak_rss_mb": max(self.peak_rss_mb, tree_peak_mb()),
        }
        if not cfg.privacy.enabled:
            summary["train_examples_seen"] = t.examples
        else:
            summary.update(
                epsilon=self.epsilon(t.rounds),
                delta=cfg.privacy.delta,
                noise_multiplier=cfg.privacy.noise_multiplier,
                clip=cfg.privacy.clip,
            )
        self.run.write_json("summary.json", summary)
        return summary
