"""Injected client faults meet the server's policy; lost updates are counted, never aggregated."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_argv
from safetensors.torch import load_file

from fedpet.algorithms import Aggregate, PlainTraining
from fedpet.cli import main
from fedpet.config import load_yaml
from fedpet.configure import build_config
from fedpet.experiment import prepare
from fedpet.runtime.faults import attack, plan_faults
from fedpet.runtime.rounds import sample_cohort
from fedpet.seeding import derive_seed
from fedpet.state import add, extract, subtract


def run(model: Path, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    flags = ("--max-length", "32", "--batch-size", "8", *extra)
    assert main(run_argv(model, out, *flags, samples=100, clients=10, per_round=5, rounds=3)) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), rows


def test_fault_draws_follow_the_rates_and_repeat(tiny_config) -> None:
    cfg = tiny_config(**{"faults.client_failure_rate": 0.3, "faults.straggler_rate": 0.5})
    plans = [plan_faults(cfg, r, 0, k, steps=4) for r in range(1, 101) for k in range(20)]
    failed = sum(p.fail_at_step is not None for p in plans) / len(plans)
    slow = sum(p.seconds > 4.0 for p in plans) / len(plans)
    assert 0.27 < failed < 0.33 and 0.47 < slow < 0.53
    assert all(1 <= p.fail_at_step <= 4 for p in plans if p.fail_at_step is not None)
    assert {p.seconds for p in plans} == {4.0, 40.0}
    assert plan_faults(cfg, 7, 1, 3, 4) == plan_faults(cfg, 7, 1, 3, 4)


def test_attacks() -> None:
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    assert all(torch.isnan(t).all() for t in attack(update, "nan", 1.0).values())
    big = attack(update, "norm", 1e6)
    assert torch.allclose(big["a"], torch.tensor([6e5, 0.0])) and float(big["b"]) == 8e5


def test_thirty_percent_of_clients_failing(tiny_model_dir: Path, tmp_path: Path) -> None:
    summary, rows = run(tiny_model_dir, tmp_path / "r", "--client-failure-rate", "0.3")
    failed = [x for r in rows for x in r["failed"]]
    assert summary["clients_failed"] == len(failed) > 0
    assert summary["rounds_completed"] == 3
    assert all(x["reason"].startswith("injected crash at local step") for x in failed)
    for r in rows:
        assert r["aggregated"] + len(r["failed"]) == 5
        # a crashed client received the global state but never sent an update
        assert r["bytes_up"] * 5 == r["bytes_down"] * r["aggregated"]


def test_stragglers_past_the_deadline_are_dropped(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 10 examples per client at batch 8: 2 steps = 2 s, 20 s for a straggler; deadline 5 s
    summary, rows = run(
        tiny_model_dir,
        tmp_path / "r",
        "--partition",
        "iid",
        "--straggler-rate",
        "0.5",
        "--round-deadline",
        "5",
    )
    late = [x for r in rows for x in r["late"]]
    assert summary["clients_late"] == len(late) > 0
    assert all(x["reason"] == "needs 20 s, round_deadline is 5 s" for x in late)
    assert all(r["aggregated"] + len(r["late"]) == 5 for r in rows)


def test_too_few_clients_skip_the_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    summary, rows = run(tiny_model_dir, out, "--client-failure-rate", "1")
    assert summary["rounds_skipped"] == 3 and summary["clients_failed"] == 15
    assert summary["bytes_up_total"] == 0 and all(r["train_loss"] is None for r in rows)
    initial = extract(prepare(build_config(load_yaml(out / "config.yaml"))).params)
    kept = load_file(out / "checkpoint" / "global.safetensors")
    assert all(torch.equal(kept[k], initial[k]) for k in initial)


def test_too_few_clients_retry_with_a_fresh_cohort(tiny_model_dir: Path, tmp_path: Path) -> None:
    summary, rows = run(
        tiny_model_dir,
        tmp_path / "r",
        "--client-failure-rate",
        "0.3",
        "--min-clients-per-round",
        "5",
        "--set",
        "federation.short_round=retry",
        "--set",
        "federation.max_retries=20",
    )
    assert summary["rounds_retried"] == sum(r["attempts"] - 1 for r in rows) > 0
    assert summary["rounds_skipped"] == 0 and all(r["aggregated"] == 5 for r in rows)
    per_client = rows[0]["bytes_down"] // (5 * rows[0]["attempts"])
    assert all(r["bytes_down"] == 5 * r["attempts"] * per_client for r in rows)


@pytest.mark.parametrize(
    "attack_args,reason",
    [
        (["--set", "faults.attack=nan"], "holds NaN or Inf"),
        (["--set", "faults.attack=norm", "--max-update-norm", "1000"], "update norm 1e+06 exceeds"),
    ],
)
def test_a_malicious_client_leaves_the_global_state_untouched(
    tiny_model_dir: Path, tmp_path: Path, attack_args: list[str], reason: str
) -> None:
    out = tmp_path / "r"
    bad = 5
    summary, rows = run(
        tiny_model_dir,
        out,
        "--rounds",
        "1",
        "--seed",
        "5",
        "--set",
        f"faults.malicious_clients=[{bad}]",
        *attack_args,
    )
    cohort = sample_cohort(5, 1, 10, 5).tolist()
    assert bad in cohort, "pick a client sampled in round 1"
    [rejected] = rows[0]["rejected"]
    assert rejected["client"] == bad and reason in rejected["reason"]
    assert summary["updates_rejected"] == 1 and rows[0]["aggregated"] == 4
    # the global state is FedAvg over the honest clients alone, recomputed here
    exp = prepare(build_config(load_yaml(out / "config.yaml")))
    start = extract(exp.params)
    agg = Aggregate()
    for k in cohort:
        if k != bad:
            trained = exp.train_client(k, start, PlainTraining(), derive_seed(5, "train", 1, k))
            agg.add(subtract(trained.state, start), float(trained.num_examples))
    expected = add(start, agg.mean())
    kept = load_file(out / "checkpoint" / "global.safetensors")
    assert all(torch.equal(kept[k], expected[k]) for k in expected)


def test_faults_are_planned_within_train_max_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 10 examples per client at batch 8 would be 2 steps; train.max_steps caps them at 1, so
    # every crash strikes at step 1 and a straggler needs 1 s x 10 instead of 2 s x 10
    capped = ("--partition", "iid", "--set", "train.max_steps=1")
    summary, rows = run(tiny_model_dir, tmp_path / "c", *capped, "--client-failure-rate", "1")
    failed = [x for r in rows for x in r["failed"]]
    assert summary["clients_failed"] == len(failed) == 15
    assert {x["reason"] for x in failed} == {"injected crash at local step 1"}
    slow = ("--straggler-rate", "1", "--round-deadline", "5")
    summary, rows = run(tiny_model_dir, tmp_path / "s", *capped, *slow)
    late = [x for r in rows for x in r["late"]]
    assert len(late) == 15 and {x["reason"] for x in late} == {"needs 10 s, round_deadline is 5 s"}
