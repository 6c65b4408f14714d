"""A study with local test splits reports how every client fares, algorithm by algorithm."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_study_base

from fedpet.cli import main
from fedpet.study.spec import parse_study, plan


def test_a_skip_rule_leaves_out_the_runs_it_matches_centralized_ones_too() -> None:
    study = parse_study(
        {
            "base": {"federation": {"clients": 4, "rounds": 2}},
            "grid": {"method.name": ["full", "lora"], "algorithm.name": ["fedavg", "fedsa-lora"]},
            "rules": [
                {"when": {"method.name": "full", "algorithm.name": "fedsa-lora"}, "skip": True}
            ],
            "centralized": {},
        },
        "test",
    )
    names = [r.name for r in plan(study)]
    assert names == [
        "full-fedavg",
        "lora-fedavg",
        "lora-fedsa-lora",
        "centralized-full",
        "centralized-lora",
    ]
    assert parse_study(study.to_dict(), "again") == study  # as written to study.yaml


@pytest.mark.integration  # 3 small runs
def test_an_algorithm_axis_reports_every_clients_spread_global_and_personal(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = tiny_study_base(tiny_model_dir)
    base["data"] |= {"client_test_fraction": 0.25, "max_train_samples": 64}
    spec = tmp_path / "study.yaml"
    spec.write_text(json.dumps({"base": base, "grid": {"data.alpha": [0.5]}}))
    out = tmp_path / "study"
    axis = "grid.algorithm.name=[fedavg,fedsa-lora,local]"
    assert main(["study", "--config", str(spec), "--out", str(out), "--set", axis, "--quiet"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 and set(results["algorithm"]) == {"fedavg", "fedsa-lora", "local"}
    report = (out / "report.md").read_text()
    assert "## How every client fares" in report
    row = results[results["run"] == "alpha0.5-fedsa-lora"].iloc[0]
    summary = json.loads((out / "runs" / "alpha0.5-fedsa-lora" / "summary.json").read_text())
    assert row["personal_test_worst"] == summary["personal_test_worst"]
    stats = ("mean", "p10", "worst")
    cells = [100 * summary[f"{m}_test_{s}"] for m in ("client", "personal") for s in stats]
    scored = pd.read_csv(out / "runs" / "alpha0.5-fedsa-lora" / "clients.csv")
    partition = json.loads((out / "runs" / "alpha0.5-fedsa-lora" / "partition.json").read_text())
    # each client predicting its most frequent training label, scored on its test split
    hits = [
        int(counts.split()[max(range(2), key=lambda label: c["label_counts"][label])])
        for counts, c in zip(scored["test_label_counts"], partition["clients"], strict=True)
    ]
    floor = np.array(hits) / scored["test_examples"].to_numpy()
    cells += [100 * floor.mean(), 100 * np.percentile(floor, 10), 100 * floor.min()]
    line = (
        "| rotten_tomatoes | alpha=0.5 | lora | fedsa-lora | "
        + " | ".join(f"{v:.1f}" for v in cells)
        + " |"
    )
    assert line in report.splitlines()
    fedavg = [
        x
        for x in report.splitlines()
        if x.startswith("| rotten_tomatoes | alpha=0.5 | lora | fedavg |")
    ]
    assert fedavg and " | - | - | - | " in fedavg[0]  # no personal model
    assert (out / "clients.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_that_sends_nothing_stays_off_the_log_axis_of_mb(tmp_path: Path) -> None:
    """Past a legend's worth of lines each method is named at its MB: never at 0 on a log axis."""
    from fedpet.study.report import _plots

    rows = [
        {
            "run": f"{m}-{a}-{s}",
            "task": "t",
            "method": "lora",
            "algorithm": f"alg{m}",
            "setting": f"alpha={a}",
            "alpha": a,
            "seed": s,
            "status": "done",
            "metric_name": "accuracy",
            "test_metric": 0.5 + 0.01 * m,
            "test_majority": 0.5,
            "mb_total": 0.0 if m == 0 else float(m),
            "codec_up": "fp32",
            "codec_down": "fp32",
        }
        for m in range(11)
        for a in (0.1, 1.0)
        for s in (0, 1)
    ]
    assert "acc_vs_bytes.png" in _plots(tmp_path, pd.DataFrame(rows), [], {})
    width = int.from_bytes((tmp_path / "acc_vs_bytes.png").read_bytes()[16:20], "big")
    assert 300 < width < 2000


def test_communication_against_a_fedft_that_sent_nothing_reads_a_dash() -> None:
    from fedpet.study.report import _communication

    done = pd.DataFrame(
        {
            "method": ["full", "lora", "full", "lora"],
            "algorithm": ["local", "local", "fedavg", "fedavg"],
            "setting": ["iid"] * 4,
            "trainable_params": [100, 10, 100, 10],
            "mb_per_round": [0.0, 0.0, 8.0, 0.8],
            "mb_total": [0.0, 0.0, 48.0, 4.8],
        }
    )
    rows = [x for x in _communication(done, ["algorithm"]) if x.startswith("| lora")]
    assert rows == [
        "| lora | local | 10 | 0.00 | 0.0 | - |",
        "| lora | fedavg | 10 | 0.80 | 4.8 | 10.00% |",
    ]
