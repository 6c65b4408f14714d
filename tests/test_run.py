"""A whole `fedpet run` on the tiny model: the run directory, its numbers and reproducibility."""

import json
from pathlib import Path

import torch
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
    assert main(tiny_args(tiny_model_dir, out, "--set", "federation.eval_every=1")) == 0
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


def test_the_test_metric_is_the_best_rounds_not_the_last_rounds(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fedpet.client import evaluate
    from fedpet.experiment import prepare
    from fedpet.launch import run_config
    from fedpet.state import load_

    out = tmp_path / "best"
    swinging = ("--rounds", "5", "--seed", "6", "--set", "train.head_lr=0.3")
    swinging += ("--set", "federation.eval_every=1")
    assert main(run_argv(tiny_model_dir, out, *swinging, eval_samples=64)) == 0
    summary = json.loads((out / "summary.json").read_text())
    exp = prepare(run_config(out))

    def test_metric(state_file: str) -> float:
        load_(exp.params, load_file(out / "checkpoint" / state_file))
        return evaluate(exp.model, exp.test, 64, exp.task.num_labels)[summary["metric_name"]]

    best, last = test_metric("best.safetensors"), test_metric("global.safetensors")
    # the case that tells them apart: the best validation round is not the last, and its
    # state scores differently on test
    assert summary["best_round"] < summary["rounds_completed"] and best != last
    assert summary["test_metric"] == best


def test_peak_memory_is_the_run_s_own_not_the_process_s(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    from fedpet.memory import own_peak_mb

    # an earlier, heavier run in this process (a study's full fine-tuning, say): 1.5 GB
    ballast = np.ones(1500 * 2**20 // 8)
    heavy = own_peak_mb()
    del ballast
    out = tmp_path / "light"
    assert main(tiny_args(tiny_model_dir, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["peak_rss_mb"] < heavy - 1000


def test_a_resumed_run_keeps_the_peak_memory_of_its_earlier_processes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    assert main(tiny_args(tiny_model_dir, out)) == 0
    # as if rounds 1-3 had run in a process that peaked at 50 GB, and rounds 4-5 are to come
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 0 < state["peak_rss_mb"] < 50_000
    state["peak_rss_mb"] = 50_000.0
    (out / "checkpoint" / "state.json").write_text(json.dumps(state))
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["federation"]["rounds"] = 5
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    (out / "summary.json").unlink()
    assert main(["run", "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["peak_rss_mb"] == 50_000.0


def test_resuming_a_finished_run_changes_nothing(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "finished"
    assert main(tiny_args(tiny_model_dir, out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert "the run has finished; nothing to resume, nothing was changed" in capsys.readouterr().out
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert main(["run", "--resume", str(out), "--dry-run"]) == 0
    assert "the run has finished" in capsys.readouterr().out


def test_eval_every_evaluates_only_those_rounds_and_the_last_and_trains_the_same(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    assert main(run_argv(tiny_model_dir, every, rounds=5)) == 0
    assert main(run_argv(tiny_model_dir, sparse, "--set", "federation.eval_every=2", rounds=5)) == 0
    rows, full = (
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (sparse, every)
    )
    assert ["val_accuracy" in r for r in rows] == [False, True, False, True, True]
    assert all(r["eval_seconds"] < 0.01 for r in rows if "val_accuracy" not in r)
    # evaluation changes nothing of the training: same states, same figures where evaluated
    a, b = (load_file(d / "checkpoint" / "global.safetensors") for d in (sparse, every))
    assert all(torch.equal(a[k], b[k]) for k in a)
    evaluated = {r["round"]: r["val_accuracy"] for r in rows if "val_accuracy" in r}
    assert all(full[k - 1]["val_accuracy"] == v for k, v in evaluated.items())
    summary = json.loads((sparse / "summary.json").read_text())
    assert summary["best_round"] in evaluated
    assert summary["best_val_metric"] == max(evaluated.values())
    assert main(["report", str(sparse)]) == 0  # the report draws the evaluated rounds
    assert (sparse / "convergence.png").read_bytes()[:4] == b"\x89PNG"
