"""--tracker logs each round as it ends (grouped names), then the summary and the files."""

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import refused, run_argv

from fedpet.cli import main
from fedpet.launch import resume_run, start_run
from fedpet.progress import RoundEnd, Watcher
from fedpet.tracking import flatten, grouped, make_tracker, tag


class Probe(Watcher):
    """Reads the tracker's log after each round, while the run is still going."""

    def __init__(self, read) -> None:
        self.read, self.seen = read, {}

    def round_end(self, end: RoundEnd) -> None:
        self.seen[end.round] = self.read()

    def finish(self, summary: dict[str, Any]) -> None:
        self.final = summary


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_has_each_round_while_the_run_goes(tiny_config, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(**{"federation.rounds": 3, "federation.eval_every": 1})

    def read() -> list[int]:
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        return [e.step for e in events.Scalars("comm/bytes_up")]

    probe = Probe(read)
    start_run(cfg, out, watchers=[make_tracker("tensorboard", out, "t"), probe])
    assert probe.seen == {1: [1], 2: [1, 2], 3: [1, 2, 3]}  # and no summary yet at round 2
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    val = [e.value for e in events.Scalars("val/accuracy")]
    assert val == pytest.approx([r["val_accuracy"] for r in _rows(out)])
    assert {"train/loss", "time/train_seconds", "final/test_metric"} <= set(
        events.Tags()["scalars"]
    )


@pytest.mark.integration  # MLflow starts git to tag the run with its source version
def test_mlflow_has_each_round_while_the_run_goes_then_params_and_files(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns: keep them out of the repo
    out = tmp_path / "run"
    cfg = tiny_config(**{"federation.rounds": 3, "federation.eval_every": 1})
    client = mlflow.MlflowClient()

    def read() -> list[int]:
        run_id = json.loads((out / "tracking.json").read_text())["MlflowTracker"]
        return sorted(m.step for m in client.get_metric_history(run_id, "val/accuracy"))

    probe = Probe(read)
    start_run(cfg, out, watchers=[make_tracker("mlflow", out, "fedpet-test"), probe])
    assert probe.seen == {1: [1], 2: [1, 2], 3: [1, 2, 3]}
    [run] = client.search_runs([client.get_experiment_by_name("fedpet-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["federation.rounds"] == "3"
    assert run.data.params["method.name"] == "lora"
    assert "final/bytes_up_total" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.yaml",
        "summary.json",
    }


class WandbSummary(Watcher):
    """Reads the W&B run's ``final/test_metric`` once the tracker has logged the summary."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def finish(self, summary: dict[str, Any]) -> None:
        self.logged = self.tracker.run.summary["final/test_metric"]


class Interrupt(Watcher):
    """Stops the run (as Ctrl-C would) when round ``at`` has ended and been logged."""

    def __init__(self, at: int) -> None:
        self.at = at

    def round_end(self, end: RoundEnd) -> None:
        if end.round == self.at:
            raise KeyboardInterrupt


@pytest.mark.integration  # wandb starts its own service process
def test_wandb_has_each_round_while_the_run_goes_and_a_resumed_run_continues_it(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # on this machine, nothing sent
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = tiny_config(**{"federation.rounds": 3, "federation.eval_every": 1})
    first = make_tracker("wandb", out, "fedpet-test")

    def read(tracker) -> tuple[int, float, float]:
        logged = tracker.run.summary  # what W&B's service holds for the run now
        return logged["_step"], logged["val/accuracy"], logged["comm/bytes_up"]

    probe = Probe(lambda: read(first))
    with pytest.raises(KeyboardInterrupt):
        start_run(cfg, out, watchers=[first, probe, Interrupt(at=2)])
    assert first.run.config["federation.rounds"] == 3
    second = make_tracker("wandb", out, "fedpet-test")
    later, final = Probe(lambda: read(second)), WandbSummary(second)
    resume_run(out, watchers=[second, later, final])
    rows = _rows(out)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert {**probe.seen, **later.seen} == {
        r["round"]: (r["round"], r["val_accuracy"], float(r["bytes_up"])) for r in rows
    }
    assert second.run.id == first.run.id  # the same W&B run, continued
    offline = sorted(p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*"))
    assert offline == [first.run.id] * 2
    assert final.logged == later.final["test_metric"]


def test_the_cli_tracker_flag_logs_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, out, "--tracker", "tensorboard", samples=48)) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("comm/bytes_down")] == [1, 2]


def test_grouped_names() -> None:
    row = {"round": 2, "val_accuracy": 0.5, "train_loss": 0.7, "bytes_up": 10, "epsilon": 1.0}
    row |= {"train_seconds": 1.5, "dp_clip": 0.1, "examples": 8, "skipped": False, "clients": [1]}
    assert grouped(row) == {
        "val/accuracy": 0.5,
        "train/loss": 0.7,
        "comm/bytes_up": 10.0,
        "privacy/epsilon": 1.0,
        "time/train_seconds": 1.5,
        "privacy/dp_clip": 0.1,
        "round/examples": 8.0,
    }
    assert tag("lora_aggregation_error") == "train/lora_aggregation_error"


def test_unknown_tracker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--tracker 'comet': choose one of mlflow, tensorboard, wandb" in refused(
        ["run", "--dry-run", "--tracker", "comet"], capsys
    )


def test_a_tracker_that_is_not_installed_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedpet import tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    err = refused(["study", "--preset", "quick", "--tracker", "mlflow"], capsys)
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
