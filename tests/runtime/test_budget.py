"""A communication budget per round: the plan is checked before a run, each round after it."""

import json
from pathlib import Path

import pytest
from helpers import refused, run_argv

from fedpet.cli import main
from fedpet.errors import FedpetError
from fedpet.runtime.budget import check_round


def test_the_planned_round_is_what_fedavg_sends_and_a_plan_over_budget_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    first = tmp_path / "first"
    assert main(run_argv(tiny_model_dir, first, "--quiet", rounds=1)) == 0
    [row] = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    sent = row["bytes_up"] + row["bytes_down"]  # 2 clients, fp32 up and down
    exact = tmp_path / "exact"
    budget = ("--set", f"federation.max_round_mb={sent / 1e6}")
    assert main(run_argv(tiny_model_dir, exact, "--quiet", *budget, rounds=1)) == 0
    over = tmp_path / "over"
    budget = ("--set", f"federation.max_round_mb={(sent - 1) / 1e6}")
    err = refused(
        run_argv(tiny_model_dir, over, "--quiet", *budget, rounds=1), capsys, keep=tmp_path
    )
    assert not over.exists()
    assert f"a round sends {sent / 1e6:,.3f} MB (2 clients x (" in err
    # a codec that halves both directions fits in half the budget
    half = tmp_path / "half"
    codecs = ("--codec-up", "fp16", "--codec-down", "fp16")
    budget = ("--set", f"federation.max_round_mb={sent / 2e6}")
    assert main(run_argv(tiny_model_dir, half, "--quiet", *codecs, *budget, rounds=1)) == 0


def test_a_round_that_sent_more_than_the_budget_stops_the_run(tiny_config) -> None:
    cfg = tiny_config(**{"federation.max_round_mb": 1.0})
    check_round(cfg, 3, 600_000 + 400_000)
    with pytest.raises(FedpetError, match=r"round 3 sent 1\.000 MB, over budget"):
        check_round(cfg, 3, 600_001 + 400_000)
