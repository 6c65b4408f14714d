"""A run killed with SIGKILL during a round and resumed ends exactly as an uninterrupted one."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from helpers import refused, run_argv
from safetensors.torch import load_file

from fedpet.cli import main

TIMING = {"train_seconds", "eval_seconds"}


# one with crashing clients, retried rounds and a robust aggregator; and
# centralized training with a decaying learning rate (optimizer and RNG states resumed);
# stateful server algorithms
SETUPS = {
    # personal tensors in the clients' states: FedSA-LoRA's B factors, Ditto's copies; every
    # client scored on its local test split (clients.csv) as of the checkpoint
    "fedsa-lora": [
        "--method",
        "lora",
        "--algorithm",
        "fedsa-lora",
        "--set",
        "data.client_test_fraction=0.2",
    ],
    "ditto": ["--algorithm", "ditto", "--set", "data.client_test_fraction=0.2"],
    # the global state grows base corrections and stacks; clients keep their merges (FLoRA)
    "fedex-lora": ["--algorithm", "fedex-lora"],
    "flora": ["--algorithm", "flora", "--set", "algorithm.ranks=[4,8]"],
    # the factor trained depends on the round; A re-set by the server's SVD; LoRA-SB's B and
    # A derived from data again by the resumed process; clients keep their pruned ranks
    "rolora": ["--algorithm", "rolora"],
    "fedsvd": ["--algorithm", "fedsvd"],
    "ffa-lora": ["--algorithm", "ffa-lora"],
    "flexlora": ["--algorithm", "flexlora", "--set", "algorithm.ranks=[4,8]"],
    "lora-sb": ["--method", "lora-sb"],
    "hetlora-pruning": [
        "--algorithm",
        "hetlora",
        "--set",
        "algorithm.ranks=[4,8]",
        "--set",
        "algorithm.prune_gamma=0.75",
        "--set",
        "algorithm.prune_lambda=1",
    ],
    # five clients trained together (federation.parallel_clients), of unequal sizes, in the
    # passes of the cost the killed run measured
    "parallel-5": [
        "--clients-per-round",
        "5",
        "--set",
        "federation.parallel_clients=5",
        "--set",
        "data.partition=quantity",
    ],
    "faults": [
        "--client-failure-rate",
        "0.3",
        "--min-clients-per-round",
        "3",
        "--set",
        "federation.short_round=retry",
        "--set",
        "algorithm.name=trimmed-mean",
    ],
    "centralized": ["--centralized", "--epochs", "10", "--set", "train.schedule=linear"],
    # server state (first and second moments, momentum; DP's adaptive clip) checkpointed
    # with the round
    "fedadam-dp": [
        "--algorithm",
        "fedadam",
        "--dp",
        "--dp-noise",
        "0.1",
        "--set",
        "privacy.target_quantile=0.5",
        "--set",
        "privacy.reproducible=true",  # two runs draw alike (see the private-DP test below)
    ],
    # and training under bf16 autocast
    "fedavgm-fedrs-bf16": [
        "--algorithm",
        "fedavgm",
        "--set",
        "algorithm.fedrs=0.5",
        "--set",
        "train.precision=bf16",
    ],
    # and per-client state on disk, read back as of the checkpoint: SCAFFOLD's controls and
    # the error-feedback residuals of top-k uploads (stochastic rounding, fp16 downloads)
    "scaffold-topk-ef": [
        "--algorithm",
        "scaffold",
        "--optimizer",
        "sgd",
        "--set",
        "train.max_grad_norm=null",
        "--codec-up",
        "topk:0.1+int8:sr",
        "--codec-down",
        "fp16",
    ],
}
# on a CUDA device (scripts/gpu-check.sh): the CUDA generator's state with the optimizer's,
# and fp16's loss scale
GPU_SETUPS = {
    "cuda-bf16-centralized": [
        "--device", "cuda", "--precision", "bf16", "--centralized", "--epochs", "10",
    ],
    "cuda-fp16": ["--device", "cuda", "--precision", "fp16", "--set", "algorithm.fedrs=0.5"],
}  # fmt: skip


def args(model: Path, out: Path, extra: list[str]) -> list[str]:
    flags = ("--max-length", "32", "--batch-size", "8", "--seed", "11", *extra)
    sizes = {"samples": 160, "clients": 8, "per_round": 3, "rounds": 10, "eval_samples": 64}
    return run_argv(model, out, *flags, **sizes)


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize(
    "setup", [*SETUPS, *(pytest.param(s, marks=pytest.mark.gpu) for s in GPU_SETUPS)]
)
@pytest.mark.integration
def test_sigkill_then_resume_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path, setup: str
) -> None:
    extra = {**SETUPS, **GPU_SETUPS}[setup]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # the kill point is drawn from a printed seed: FEDPET_KILL_SEED=<it> repeats a failure
    seed = int(os.environ.get("FEDPET_KILL_SEED", zlib.crc32(setup.encode())))
    print(f"kill seed {seed}")
    rng = random.Random(seed)
    after = rng.randint(1, 5)  # kill once this many rounds are logged, mid-way through the next
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpet.cli", *args(tiny_model_dir, killed, extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        state = killed / "checkpoint" / "state.json"
        if state.exists() and log.exists() and len(log.read_text().splitlines()) >= after:
            time.sleep(rng.uniform(0.0, 0.1))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be killed; the test needs more rounds")
    assert proc.returncode == -signal.SIGKILL
    done = json.loads((killed / "checkpoint" / "state.json").read_text())["round"]
    assert 1 <= done <= 10 and not (killed / "summary.json").exists()

    assert main(["run", "--resume", str(killed)]) == 0
    if "federation.parallel_clients=5" in extra:  # the pass cost measured at the start, kept
        cost = yaml.safe_load((killed / "config.yaml").read_text())["federation"]["pass_cost"]
        assert cost.isdigit()
        extra = [*extra, "--set", f"federation.pass_cost={cost}"]
    assert main(args(tiny_model_dir, whole, extra)) == 0

    a = load_file(killed / "checkpoint" / "global.safetensors")
    b = load_file(whole / "checkpoint" / "global.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(killed) == metrics(whole)
    scored = killed / "clients.csv"
    if "data.client_test_fraction=0.2" in extra:
        assert scored.read_text() == (whole / "clients.csv").read_text()
    sa = json.loads((killed / "summary.json").read_text())
    sb = json.loads((whole / "summary.json").read_text())
    assert sa.keys() == sb.keys()
    for key in (
        "best_round",
        "best_val_metric",
        "test_metric",
        "bytes_up_total",
        "bytes_down_total",
        "train_examples_seen",  # (not under DP: a statistic of the clients' data)
        "rounds_completed",
        "client_test_worst",
        "personal_test_p10",
    ):
        assert sa.get(key) == sb.get(key), key


class _CopyAfter:
    """A watcher that copies the run directory once round ``after`` is checkpointed."""

    def __init__(self, out: Path, copy: Path, after: int) -> None:
        self.out, self.copy, self.after = out, copy, after

    def start(self, run) -> None: ...

    def progress(self, done: int, total: int) -> None: ...

    def round_end(self, end) -> None:
        if end.round == self.after:
            shutil.copytree(self.out, self.copy)

    def finish(self, summary) -> None: ...

    def close(self) -> None: ...


@pytest.mark.parametrize(
    "dp",
    [
        {"privacy.noise": "central"},  # the server's secret: Poisson cohorts and the noise
        {"privacy.noise": "distributed", "privacy.sampling": "fixed"},  # and the clients'
    ],
    ids=["central", "distributed"],
)
def test_a_private_dp_run_resumed_ends_as_the_run_it_was_copied_from(
    tiny_config, tmp_path: Path, dp: dict
) -> None:
    from safetensors.torch import load_file

    from fedpet.launch import resume_run, start_run

    cfg = tiny_config(
        **{"privacy.enabled": True, "privacy.noise_multiplier": 1.0, "federation.rounds": 4},
        **{"data.max_eval_samples": 32},
        **dp,
    )
    whole, copy, other = tmp_path / "whole", tmp_path / "copy", tmp_path / "other"
    start_run(cfg, whole, watchers=[_CopyAfter(whole, copy, after=2)])
    resume_run(copy, watchers=[])  # rounds 3 and 4 again, from the secrets kept in the copy
    a = load_file(str(whole / "checkpoint" / "global.safetensors"))
    b = load_file(str(copy / "checkpoint" / "global.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(whole) == metrics(copy)
    start_run(cfg, other, watchers=[])  # the same config: other secrets, other noise
    c = load_file(str(other / "checkpoint" / "global.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    secret = json.loads((whole / "checkpoint" / "state.json").read_text())["dp_secret"]
    assert str(secret) not in (whole / "config.yaml").read_text()


def test_resume_refuses_other_flags_and_missing_checkpoints(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "give no other flags than --rounds N" in refused(
        ["run", "--resume", str(tmp_path), "--lr", "0.1"], capsys, keep=tmp_path
    )
    assert "config: cannot read" in refused(
        ["run", "--resume", str(tmp_path / "nothing")], capsys, keep=tmp_path
    )


def test_resume_with_rounds_extends_a_finished_run_to_the_run_planned_for_that_many(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from fedpet.launch import start_run

    every = {"federation.eval_every": 1}
    short, planned = tmp_path / "short", tmp_path / "planned"
    start_run(tiny_config(**every, **{"federation.rounds": 2}), short)
    start_run(tiny_config(**every, **{"federation.rounds": 4}), planned)
    assert "--rounds 1 is not allowed: the run in" in refused(
        ["run", "--resume", str(short), "--rounds", "1"], capsys, keep=tmp_path
    )
    assert main(["run", "--resume", str(short), "--rounds", "4"]) == 0
    for name in ("global", "best"):
        a = load_file(str(short / "checkpoint" / f"{name}.safetensors"))
        b = load_file(str(planned / "checkpoint" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in b), name
    timing = ("train_seconds", "eval_seconds")
    rows = [
        [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]
        for lines in ((d / "metrics.jsonl").read_text().splitlines() for d in (short, planned))
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 4
    summaries = [json.loads((d / "summary.json").read_text()) for d in (short, planned)]
    for key in ("test_metric", "best_round", "bytes_up_total", "rounds_completed"):
        assert summaries[0][key] == summaries[1][key], key


def test_extending_a_run_whose_schedule_spans_its_epochs_is_refused(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedpet.launch import start_run

    out = tmp_path / "central"
    cfg = tiny_config(**{"centralized": True, "train.epochs": 1, "train.schedule": "linear"})
    start_run(cfg, out)
    assert "linear learning-rate schedule spans the planned epochs" in refused(
        ["run", "--resume", str(out), "--epochs", "2"], capsys, keep=tmp_path
    )
