"""Optional experiment tracking: a finished run's config, per-round metrics and files.

``--tracker mlflow`` logs to MLflow (``MLFLOW_TRACKING_URI``, e.g. ``sqlite:///mlflow.db``);
``--tracker tensorboard`` writes event files to ``<run dir>/tensorboard``. Each run is
logged from its run directory when it finishes, so tracking never slows a round.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from fedpet.errors import FedpetError

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
ARTIFACTS = ("config.yaml", "summary.json", "metrics.jsonl", "partition.json")


def check_tracker(name: str) -> None:
    """Refuse an unknown tracker, or one whose package is not installed."""
    if name not in PACKAGES:
        raise FedpetError(f"--tracker {name!r}: choose one of {', '.join(PACKAGES)}")
    if importlib.util.find_spec(PACKAGES[name]) is None:
        raise FedpetError(
            f"--tracker {name} needs the {PACKAGES[name]} package: "
            ".venv/bin/pip install -e '.[tracking]'"
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


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "round"
    }


def log_run(tracker: str, run_dir: Path, experiment: str) -> None:
    """Log the finished run in ``run_dir`` to ``tracker`` under ``experiment``."""
    params = flatten(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rounds = [json.loads(line) for line in lines]
    summary = _numbers(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))
    if tracker == "mlflow":
        import mlflow

        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_dir.name):
            mlflow.log_params(params)
            for row in rounds:
                mlflow.log_metrics(_numbers(row), step=int(row["round"]))
            mlflow.log_metrics({f"final.{k}": v for k, v in summary.items()})
            for name in ARTIFACTS:
                mlflow.log_artifact(str(run_dir / name))
    else:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
        for row in rounds:
            for key, value in _numbers(row).items():
                writer.add_scalar(key, value, int(row["round"]))
        for key, value in summary.items():
            writer.add_scalar(f"final/{key}", value, 0)
        writer.close()
