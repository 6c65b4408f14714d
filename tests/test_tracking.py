"""--tracker logs a finished run's config, per-round metrics and files to MLflow or TensorBoard."""

import json
from pathlib import Path

import pytest
from helpers import run_argv

from fedpet.cli import main
from fedpet.tracking import flatten


def _run(model: Path, out: Path, tracker: str) -> None:
    every = ("--set", "federation.eval_every=1")
    assert main(run_argv(model, out, "--tracker", tracker, *every, samples=48, rounds=3)) == 0


def test_tensorboard_gets_every_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _run(tiny_model_dir, out, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    val = [e.value for e in events.Scalars("val_accuracy")]
    assert [e.step for e in events.Scalars("bytes_up")] == [1, 2, 3]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert val == pytest.approx([json.loads(r)["val_accuracy"] for r in rows])
    assert "final/test_metric" in events.Tags()["scalars"]


def test_mlflow_gets_params_metrics_and_files(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns: keep them out of the repo
    out = tmp_path / "run"
    _run(tiny_model_dir, out, "mlflow")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("fedpet-rotten_tomatoes")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["federation.rounds"] == "3"
    assert run.data.params["method.name"] == "lora"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert "final.bytes_up_total" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.yaml",
        "summary.json",
    }


def test_unknown_tracker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--dry-run", "--tracker", "wandb"]) == 2
    assert "--tracker 'wandb': choose one of mlflow, tensorboard" in capsys.readouterr().err


def test_a_tracker_that_is_not_installed_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedpet import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    assert main(["study", "--preset", "quick", "--tracker", "mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fedpet study: error: --tracker mlflow needs the mlflow package: "
        ".venv/bin/pip install -e '.[tracking]'"
    )


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": None,
    }
