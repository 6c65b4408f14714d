"""End to end on the packaged all-MiniLM-L6-v2 and a small slice of real rotten_tomatoes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpet.configure import build_config, resolve
from fedpet.experiment import prepare
from fedpet.methods import METHODS
from fedpet.rundir import RunDir
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.simulation import run_simulation

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SLICE = [
    ("data.max_train_samples", 32),
    ("data.max_eval_samples", 32),
    ("data.max_length", 32),
    ("federation.clients", 2),
    ("federation.clients_per_round", 2),
    ("federation.rounds", 1),
]


def one_round(method: str, out: Path) -> dict:
    cfg = resolve(build_config({}, [*SLICE, ("method.name", method)]))
    exp = prepare(cfg)
    run = RunDir(out)
    run.create(overwrite=False)
    recorder = Recorder(exp, run)
    run_simulation(exp, recorder)
    return recorder.finish()


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("methods")
    return {m: one_round(m, root / m) for m in sorted(METHODS)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_a_round_and_sends_exactly_its_trainable_fp32_bytes(
    summaries: dict[str, dict], method: str
) -> None:
    s = summaries[method]
    assert s["rounds_completed"] == 1 and s["train_examples_seen"] == 32
    # rounds x clients_per_round x 4 bytes x trainable params, both directions
    assert s["bytes_up_total"] == 1 * 2 * 4 * s["trainable_params"]
    assert s["bytes_down_total"] == 1 * 2 * 4 * s["trainable_params"]


def test_peft_methods_send_a_tiny_fraction_of_full_fine_tuning(summaries: dict[str, dict]) -> None:
    full = summaries["full"]
    assert full["trainable_params"] == full["total_params"]
    assert full["total_params"] > 22_000_000
    assert summaries["lora"]["bytes_up_total"] <= 0.004 * full["bytes_up_total"]
    for method in ("adapter", "prefix", "bitfit", "prompt", "ia3"):
        assert summaries[method]["bytes_up_total"] < 0.02 * full["bytes_up_total"]


@pytest.mark.parametrize("task", ["tweet_sentiment", "bbc_news"])
def test_other_packaged_tasks_run_a_federated_lora_round(tmp_path: Path, task: str) -> None:
    cfg = resolve(build_config({}, [*SLICE, ("data.task", task), ("data.max_length", 64)]))
    exp = prepare(cfg)
    assert exp.model.head.out_features == exp.task.num_labels
    run = RunDir(tmp_path / task)
    run.create(overwrite=False)
    recorder = Recorder(exp, run)
    run_simulation(exp, recorder)
    summary = recorder.finish()
    assert summary["task"] == task and summary["rounds_completed"] == 1
    assert summary["bytes_up_total"] == 2 * 4 * summary["trainable_params"]


def test_fedpet_command_runs_offline_and_learns(tmp_path: Path) -> None:
    # 2 rounds of 4 clients x 80 examples: about 0.72 test accuracy on 200 examples (seeds
    # 0-2: 0.71, 0.725, 0.74), where always predicting one label scores about 0.5
    out = tmp_path / "run"
    args = ["--rounds", "2", "--clients", "4", "--clients-per-round", "4", "--out", str(out)]
    args += ["--max-train-samples", "320", "--partition", "iid"]
    args += ["--set", "data.max_eval_samples=200"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedpet.cli", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run directory: {out}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "all-MiniLM-L6-v2" and summary["method"] == "lora"
    assert summary["test_accuracy"] >= 0.62


def test_minilm_clients_trained_together_end_as_one_at_a_time(tmp_path: Path) -> None:
    # five clients of unequal sizes, two local epochs, dropout on: a batched pass per width
    from safetensors.torch import load_file

    states = []
    for k in ("1", "5"):
        cfg = resolve(
            build_config(
                {"out": str(tmp_path / k)},
                [
                    *SLICE,
                    ("data.max_train_samples", 60),
                    ("data.partition", "quantity"),
                    ("data.min_client_size", 4),
                    ("federation.clients", 5),
                    ("federation.clients_per_round", 5),
                    ("train.local_epochs", 2),
                    ("federation.parallel_clients", k),
                    ("federation.pass_cost", "0"),  # a pass per batch width, as CPUs measure
                ],
            )
        )
        exp = prepare(cfg)
        run = RunDir(tmp_path / k)
        run.create(overwrite=False)
        recorder = Recorder(exp, run)
        run_simulation(exp, recorder)
        recorder.finish()
        states.append(load_file(tmp_path / k / "checkpoint" / "global.safetensors"))
    a, b = states
    diff = sum(float(((a[n] - b[n]) ** 2).sum()) for n in a)
    assert diff**0.5 <= 1e-5 * sum(float((a[n] ** 2).sum()) for n in a) ** 0.5
    assert any(not torch.equal(a[n], b[n]) for n in a)  # really another computation
