"""A whole `fedpet run` on the tiny model: the run directory, its numbers and reproducibility."""

import json
from pathlib import Path

import yaml
from helpers import run_argv
from safetensors.torch import load_file

from fedpet.cli import main

REQUIRED = {
    "task",
    "method",
    "model",
    "seed",
    "centralized",
    "clients",
    "clients_per_round",
    "rounds_completed",
    "metric_name",
    "best_round",
    "best_val_metric",
    "test_metric",
    "test_accuracy",
    "trainable_params",
    "total_params",
    "bytes_up_total",
    "bytes_down_total",
    "train_examples_seen",
    "train_seconds",
    "wall_seconds",
    "peak_rss_mb",
}


def tiny_args(model: Path, out: Path, *extra: str) -> list[str]:
    flags = ("--max-length", "32", "--batch-size", "8", *extra)
    sizes = {"samples": 96, "clients": 6, "per_round": 3, "rounds": 3, "eval_samples": 64}
    return run_argv(model, out, *flags, **sizes)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_directory_holds_config_partition_metrics_checkpoint_summary(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= REQUIRED
    assert summary["rounds_completed"] == 3 and summary["clients"] == 6
    n = summary["trainable_params"]
    assert summary["bytes_up_total"] == 3 * 3 * 4 * n
    assert summary["bytes_down_total"] == 3 * 3 * 4 * n
    assert summary["train_examples_seen"] == sum(
        r["examples"] for r in lines(out / "metrics.jsonl")
    )
    assert 1 <= summary["best_round"] <= 3
    metrics = lines(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert {"val_accuracy", "val_macro_f1", "train_loss", "bytes_up", "bytes_down"} <= set(
        metrics[0]
    )
    assert all(m["bytes_up"] == 3 * 4 * n and len(m["clients"]) == 3 for m in metrics)
    assert summary["best_val_metric"] == max(m["val_accuracy"] for m in metrics)
    part = json.loads((out / "partition.json").read_text())
    assert sum(c["size"] for c in part["clients"]) == 96 and len(part["clients"]) == 6
    assert part["split"]["train"] == 96
    assert (out / "partition_labels.png").stat().st_size > 5000
    assert (out / "partition_sizes.png").stat().st_size > 5000
    state = load_file(out / "checkpoint" / "global.safetensors")
    assert sum(t.numel() for t in state.values()) == n
    assert "head.weight" in state
    ckpt = json.loads((out / "checkpoint" / "state.json").read_text())
    assert ckpt["round"] == 3 and ckpt["best_round"] == summary["best_round"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["lr"] == 2e-3 and cfg["federation"]["clients_per_round"] == 3


def test_saved_config_reproduces_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(tiny_args(tiny_model_dir, first, "--seed", "4")) == 0
    assert main(["run", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    a = load_file(first / "checkpoint" / "global.safetensors")
    b = load_file(second / "checkpoint" / "global.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    drop = {"train_seconds", "eval_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(lines(first / "metrics.jsonl")) == strip(lines(second / "metrics.jsonl"))


def test_overwrite_replaces_a_previous_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, out, "--rounds", "2")) == 0
    assert main(tiny_args(tiny_model_dir, out, "--rounds", "1", "--overwrite")) == 0
    assert len(lines(out / "metrics.jsonl")) == 1


def test_centralized_run_sends_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "central"
    assert main(tiny_args(tiny_model_dir, out, "--centralized", "--epochs", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["centralized"] is True and summary["rounds_completed"] == 2
    assert summary["bytes_up_total"] == 0 and summary["train_examples_seen"] == 2 * 96
