"""Experiment tracking as the run goes: its config, each round's metrics, the summary, files.

``--tracker mlflow`` logs to MLflow (``MLFLOW_TRACKING_URI``, e.g. ``sqlite:///mlflow.db``);
``--tracker tensorboard`` writes event files to ``<run dir>/tensorboard``; ``--tracker
wandb`` logs to Weights & Biases (the ``wandb`` extra; ``WANDB_MODE=offline`` keeps it
local). Each round is logged as it ends, under grouped names (``val/accuracy``,
``train/loss``, ``comm/bytes_up``, ``time/train_seconds``, ``privacy/epsilon``); the summary
goes under ``final/``. A resumed run continues the same MLflow or W&B run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from fedpet.errors import FedpetError
from fedpet.progress import RoundEnd, RunStart, Watcher

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
EXTRAS = {"mlflow": "tracking", "tensorboard": "tracking", "wandb": "wandb"}
ARTIFACTS = ("config.yaml", "summary.json", "metrics.jsonl", "partition.json")
TRACKER_FILE = "tracking.json"  # the tracker's run id, so that a resumed run continues it
GROUPS = (("bytes_", "comm/"), ("epsilon", "privacy/"), ("dp_", "privacy/"), ("lora_", "train/"))


def check_tracker(name: str) -> None:
    """Refuse an unknown tracker, or one whose package is not installed."""
    if name not in PACKAGES:
        raise FedpetError(f"--tracker {name!r}: choose one of {', '.join(PACKAGES)}")
    if importlib.util.find_spec(PACKAGES[name]) is None:
        raise FedpetError(
            f"--tracker {name} needs the {PACKAGES[name]} package: "
            f".venv/bin/pip install -e '.[{EXTRAS[name]}]'"
        )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def tag(key: str) -> str:
    """The grouped name of a metrics-line figure: ``val_accuracy`` -> ``val/accuracy``."""
    if key.endswith("_seconds"):
        return f"time/{key}"
    for start in ("val_", "train_"):
        if key.startswith(start):
            return f"{start[:-1]}/{key.removeprefix(start)}"
    group = next((group for start, group in GROUPS if key.startswith(start)), "round/")
    return f"{group}{key}"


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a metrics line (lists, flags and the round left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "round"
    }


def grouped(row: dict[str, Any]) -> dict[str, float]:
    """A metrics line's numbers under their grouped names."""
    return {tag(k): v for k, v in numbers(row).items()}


class Tracker(Watcher):
    """A tracker: logs the run's config at the start and every round as it ends."""

    def __init__(self, out: Path, experiment: str) -> None:
        self.out, self.experiment = out, experiment
        self.finished = False

    def saved_id(self) -> str | None:
        """The tracker's run id a previous process of this run left, if any."""
        try:
            data: dict[str, str] = json.loads((self.out / TRACKER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data.get(type(self).__name__)

    def save_id(self, run_id: str) -> None:
        """Keep the tracker's run id in the run directory."""
        (self.out / TRACKER_FILE).write_text(json.dumps({type(self).__name__: run_id}) + "\n")


class MlflowTracker(Tracker):
    """One MLflow run per fedpet run, in the experiment ``experiment``."""

    def start(self, run: RunStart) -> None:
        """Start (or continue) the MLflow run; log the config as params."""
        import mlflow

        mlflow.set_experiment(self.experiment)
        active = mlflow.start_run(run_id=self.saved_id(), run_name=self.out.name)
        self.save_id(active.info.run_id)
        if not run.done:
            mlflow.log_params(flatten(run.config))

    def round_end(self, end: RoundEnd) -> None:
        """Log the round's figures at step ``round``."""
        import mlflow

        mlflow.log_metrics(grouped(end.row), step=end.round)

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the summary's figures and the run's files."""
        import mlflow

        mlflow.log_metrics({f"final/{k}": v for k, v in numbers(summary).items()})
        for name in ARTIFACTS:
            if (self.out / name).exists():
                mlflow.log_artifact(str(self.out / name))
        self.finished = True

    def close(self) -> None:
        """End the MLflow run: FINISHED, or KILLED when the run stopped before its end."""
        import mlflow

        mlflow.end_run(status="FINISHED" if self.finished else "KILLED")


class TensorboardTracker(Tracker):
    """Event files in ``<run dir>/tensorboard``, flushed after every round."""

    def start(self, run: RunStart) -> None:
        """Open the writer; write the config as text."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        if not run.done:
            params = flatten(run.config)
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def round_end(self, end: RoundEnd) -> None:
        """Write the round's scalars and flush them to disk."""
        for key, value in grouped(end.row).items():
            self.writer.add_scalar(key, value, end.round)
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the summary's figures."""
        step = int(summary["rounds_completed"])
        for key, value in numbers(summary).items():
            self.writer.add_scalar(f"final/{key}", value, step)

    def close(self) -> None:
        """Close the writer."""
        if hasattr(self, "writer"):
            self.writer.close()


class WandbTracker(Tracker):
    """One Weights & Biases run per fedpet run, in the project ``experiment``."""

    def start(self, run: RunStart) -> None:
        """Start (or resume) the W&B run with the config."""
        import wandb

        self.run = wandb.init(
            project=self.experiment,
            name=self.out.name,
            id=self.saved_id(),
            resume="allow",
            config=flatten(run.config),
            dir=str(self.out),
        )
        self.save_id(self.run.id)

    def round_end(self, end: RoundEnd) -> None:
        """Log the round's figures at step ``round``, committed now (not at the next step)."""
        self.run.log(grouped(end.row), step=end.round, commit=True)

    def finish(self, summary: dict[str, Any]) -> None:
        """Put the summary's figures in the run's summary."""
        self.run.summary.update({f"final/{k}": v for k, v in numbers(summary).items()})
        self.finished = True

    def close(self) -> None:
        """Finish the W&B run (exit code 1 when the run stopped before its end)."""
        if hasattr(self, "run"):
            self.run.finish(exit_code=0 if self.finished else 1)


TRACKERS: dict[str, type[Tracker]] = {
    "mlflow": MlflowTracker,
    "tensorboard": TensorboardTracker,
    "wandb": WandbTracker,
}


def make_tracker(name: str, out: Path, experiment: str) -> Tracker:
    """The tracker ``name`` for the run in ``out`` (checked with :func:`check_tracker`)."""
    check_tracker(name)
    return TRACKERS[name](out, experiment)
