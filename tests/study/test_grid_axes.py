"""Linked grid axes (values that set several fields), and rounds and MB to a target."""

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_study_base

from fedpet.cli import main
from fedpet.errors import FedpetError
from fedpet.study.curves import to_target
from fedpet.study.spec import parse_study, plan

SCENARIOS = [
    {"name": "silo", "federation.clients": 2, "federation.clients_per_round": 2},
    {"name": "device", "federation.clients": 4, "federation.clients_per_round": 1},
]


def test_a_linked_axis_sets_its_fields_together_and_centralized_keeps_what_applies() -> None:
    study = parse_study(
        {
            "base": {"federation": {"clients": 4, "rounds": 2}},
            "grid": {
                "method.name": ["full", "lora"],
                "partition": [{"data.partition": "iid"}, {"data.alpha": 0.1}],
                "scenario": [{**SCENARIOS[0], "train.lr": 1e-3}, SCENARIOS[1]],
            },
            "rules": [{"when": {"scenario": "device"}, "set": {"train.batch_size": 4}}],
            "centralized": {},
        },
        "test",
    )
    runs = {r.name: r for r in plan(study)}
    federated = [n for n, r in runs.items() if not r.config.centralized]
    assert federated[:4] == [
        "full-iid-silo",
        "full-iid-device",
        "full-alpha0.1-silo",
        "full-alpha0.1-device",
    ]
    iid, skewed = runs["lora-iid-device"].config, runs["lora-alpha0.1-silo"].config
    assert (iid.data.partition, iid.federation.clients, iid.federation.clients_per_round) == (
        "iid",
        4,
        1,
    )
    assert iid.train.batch_size == 4  # the rule matched the named value
    assert (skewed.data.partition, skewed.data.alpha, skewed.federation.clients) == (
        "dirichlet",
        0.1,
        2,
    )
    assert skewed.train.lr == 1e-3 and skewed.train.batch_size == 16
    assert runs["lora-iid-device"].varied == {
        "method.name": "lora",
        "data.partition": "iid",
        "scenario": "device",
    }
    # a centralized baseline keeps only what applies without a federation: the silo
    # value's learning rate (so it keeps its name); partitions and client counts drop out
    central = [n for n, r in runs.items() if r.config.centralized]
    assert central == [
        "centralized-full-silo",
        "centralized-full",
        "centralized-lora-silo",
        "centralized-lora",
    ]
    assert runs["centralized-lora-silo"].config.train.lr == 1e-3
    assert runs["centralized-lora"].config.train.lr == 2e-3  # lora's own
    # the device value left nothing to a centralized run, so its rule does not match there
    assert runs["centralized-lora"].config.train.batch_size == 16


@pytest.mark.parametrize(
    "axis,needle",
    [
        ([{"data.alpha": 0.1}, 1.0], "mixes mappings and plain values"),
        ([{"name": "a", "data.alpha": 0.1}, {"data.alpha": 1.0}], "give every value a name"),
        ([{"name": "a", "data.alpha": 0.1}, {"name": "a", "data.alpha": 1}], "share a name"),
        ([{"name": "a"}], "each value maps dotted fields"),
        ([{"data.alfa": 0.1}], "study run lora-alfa0.1: data.alfa: unknown field"),
    ],
)
def test_bad_linked_axes_are_one_clear_error(axis: list, needle: str) -> None:
    with pytest.raises(FedpetError) as info:
        plan(parse_study({"grid": {"method.name": ["lora"], "x": axis}}, "s"))
    assert needle in str(info.value)


def _curve(vals: list[float], mb_per_round: float) -> pd.DataFrame:
    rounds = range(1, len(vals) + 1)
    return pd.DataFrame(
        {"val": vals, "mb": [mb_per_round * r for r in rounds]}, index=pd.Index(rounds)
    )


def test_rounds_and_mb_to_target_by_hand() -> None:
    nan = float("nan")
    found = {
        ("t", "alpha=1"): {
            "full": _curve([0.5, nan, 0.7, 0.8], 100.0),  # target 0.95 x 0.8 = 0.76
            "lora": _curve([0.6, 0.7, 0.77, 0.75], 1.0),  # 0.77 >= 0.76 at round 3
            "bitfit": _curve([0.6, 0.7, 0.7, 0.75], 2.0),  # never: best 0.75
            "lora, scenario=b": _curve([0.9], 1.0),  # no FedFT with scenario=b
        },
        ("t", "centralized"): {"full": _curve([0.8], 0.0), "lora": _curve([0.9], 0.0)},
    }
    rows = {r["line"]: r for r in to_target(found)}
    assert set(rows) == {"full", "lora", "bitfit"}
    assert rows["lora"]["target"] == pytest.approx(0.76)
    assert (rows["lora"]["round"], rows["lora"]["mb"]) == (3, 3.0)
    assert (rows["full"]["round"], rows["full"]["mb"]) == (4, 400.0)
    assert rows["bitfit"]["round"] is None and rows["bitfit"]["best"] == 0.75


def test_a_scenario_study_reports_bytes_per_scenario_and_rounds_to_target(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the scenarios set the clients and clients per round
    study = {
        "base": tiny_study_base(tiny_model_dir, eval_every=1),
        "grid": {"method.name": ["full", "lora"], "scenario": SCENARIOS},
    }
    spec = tmp_path / "scenarios.yaml"
    spec.write_text(json.dumps(study))
    out = tmp_path / "study"
    assert main(["study", "--config", str(spec), "--out", str(out), "--quiet"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["run"]) == ["full-device", "full-silo", "lora-device", "lora-silo"]
    report = (out / "report.md").read_text()
    # 2 rounds x 2 clients up and down for the silo, x 1 client for the device
    summary = json.loads((out / "runs" / "lora-silo" / "summary.json").read_text())
    silo_mb = (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6
    assert summary["bytes_up_total"] == 2 * 2 * 4 * summary["trainable_params"]
    comm = report[report.index("## Communication") :].split("\n\n")[2].splitlines()
    assert comm[0] == (
        "| method | scenario | trainable params | MB per round | MB per run | % of FedFT |"
    )
    full = json.loads((out / "runs" / "full-silo" / "summary.json").read_text())
    full_mb = (full["bytes_up_total"] + full["bytes_down_total"]) / 1e6
    lora_silo = f"| lora | silo | {summary['trainable_params']:,} | {silo_mb / 2:,.2f} | "
    assert f"{lora_silo}{silo_mb:,.1f} | {100 * silo_mb / full_mb:.2f}% |" in comm
    assert len(comm) == 2 + 4  # one row per method and scenario
    assert "## Rounds and MB to 95% of FedFT" in report
    lora_silo_row = "| rotten_tomatoes | alpha=1 | lora, scenario=silo |"
    assert any(x.startswith(lora_silo_row) for x in report.splitlines())
    assert "of wall time" in report.splitlines()[2]


def test_an_iid_run_has_no_alpha_so_no_point_on_the_alpha_axis(tmp_path: Path) -> None:
    from fedpet.study.results import run_row

    study = parse_study(
        {"grid": {"partition": [{"data.partition": "iid"}, {"data.alpha": 0.1}]}}, "s"
    )
    rows = [run_row(run, tmp_path / run.name) for run in plan(study)]
    assert [(r["setting"], r["alpha"]) for r in rows] == [("iid", None), ("alpha=0.1", 0.1)]


def test_a_rule_axis_that_sets_the_algorithm_or_the_method_is_reported(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the LoRA-aggregation study's axis: LoRA-SB is a method, run with the default FedAvg
    rules = [{"algorithm.name": "ffa-lora"}, {"method.name": "lora-sb"}]
    study = {"base": tiny_study_base(tiny_model_dir, rounds=1), "grid": {"rule": rules}}
    spec = tmp_path / "rules.yaml"
    spec.write_text(json.dumps(study))
    out = tmp_path / "study"
    assert main(["study", "--config", str(spec), "--out", str(out), "--quiet"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert list(zip(results["method"], results["algorithm"], strict=True)) == [
        ("lora", "ffa-lora"),
        ("lora-sb", "fedavg"),
    ]
    report = (out / "report.md").read_text()
    assert "## rotten_tomatoes, algorithm=fedavg" in report
    assert (out / "aggregation_error.png").read_bytes()[:4] == b"\x89PNG"
