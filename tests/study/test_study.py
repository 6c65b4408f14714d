"""Studies: planning a grid, aggregating results by hand, running, resuming, re-rendering."""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import refused, run_argv, tiny_study_base

from fedpet.cli import main
from fedpet.errors import FedpetError
from fedpet.study.results import mean_std, relative_to_baseline
from fedpet.study.spec import PRESETS, load_study, parse_study, plan


def test_plan_expands_the_grid_applies_rules_and_adds_centralized_baselines() -> None:
    study = parse_study(
        {
            "base": {"federation": {"clients": 4, "rounds": 2}},
            "grid": {"method.name": ["full", "lora"], "data.alpha": [0.1, 1.0], "seed": [0, 1]},
            "rules": [{"when": {"method.name": "full"}, "set": {"train.lr": 5e-5}}],
            "centralized": {"train.epochs": 3},
        },
        "test",
    )
    runs = plan(study)
    federated = [r for r in runs if not r.config.centralized]
    centralized = [r for r in runs if r.config.centralized]
    assert len(federated) == 8 and len(centralized) == 4  # alpha does not apply centrally
    assert federated[0].name == "full-alpha0.1-seed0"
    assert centralized[0].name == "centralized-full-seed0"
    assert {r.config.train.lr for r in runs if r.config.method.name == "full"} == {5e-5}
    assert {r.config.train.lr for r in runs if r.config.method.name == "lora"} == {2e-3}
    assert all(r.config.train.epochs == 3 for r in centralized)
    assert {
        (r.config.data.alpha, r.config.seed) for r in federated if r.varied["method.name"] == "lora"
    } == {(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)}


@pytest.mark.parametrize(
    "data,needle",
    [
        (
            {"grid": {"method.name": ["lora", "nope"]}},
            "study run nope: method.name = 'nope'",
        ),
        ({"grid": {"seed": 3}}, "grid must map dotted fields to non-empty lists"),
        ({"gird": {}}, "unknown key 'gird'"),
        ({"rules": [{"when": {}}]}, "each rule is"),
        ({"rules": [{"when": {}, "skip": "yes"}]}, "each rule is"),
    ],
)
def test_bad_studies_are_one_clear_error(data: dict, needle: str) -> None:
    with pytest.raises(FedpetError, match=None) as info:
        plan(parse_study(data, "s"))
    assert needle in str(info.value)


def test_presets_plan_without_errors() -> None:
    sizes = {name: len(plan(load_study(preset=name))) for name in PRESETS if name != "flowertune"}
    assert sizes == {
        "quick": 15,
        "cpu": 7 * 3 * 3 * 3 + 7 * 3 * 3,
        "algorithms": 2 * 2 * 10 * 3,
        "privacy": 2 * 3,
        "fedpetuning-glue": 6 * 5 * 3 * 5,
        "paper-heterogeneity": 7 * 4 * 3 + 7 * 3,  # iid and three alphas; centralized
        "paper-scale": 7 * 3,
        "paper-scenarios": 7 * 2 + 7,
        "paper-personalization": (2 * 5 - 1) * 3 * 3,  # FedSA-LoRA with LoRA only
        "paper-lora-aggregation": 9 * 2 * 3,  # nine rules, two alphas, three seeds
    }


def test_the_flowertune_preset_is_flowertune_s_template_and_needs_a_gpu() -> None:
    import yaml

    from fedpet.study.spec import preset_text

    if not torch.cuda.is_available():  # 4-bit base weights: one line, before any run
        with pytest.raises(FedpetError, match="quantization = '4bit' is not allowed: none on"):
            plan(load_study(preset="flowertune"))
    data = yaml.safe_load(preset_text("flowertune"))
    data["base"]["quantization"] = "none"  # what it plans, wherever it runs
    [run] = plan(parse_study(data, "flowertune"))
    cfg = run.config
    assert (cfg.method.name, cfg.method.r, cfg.method.lora_alpha) == ("lora", 32, 64)
    fed, train = cfg.federation, cfg.train
    assert (fed.clients, fed.clients_per_round, fed.rounds) == (20, 2, 200)
    assert (train.batch_size, train.max_steps, train.lr) == (16, 10, 5e-5)
    assert train.gradient_checkpointing and cfg.data.max_length == 512
    # Mistral-7B's LoRA (r 32 on q_proj 4096x4096 and v_proj 4096x1024, 32 layers) in fp32,
    # both ways, two clients: within the preset's budget
    values = 32 * (32 * (4096 + 4096) + 32 * (4096 + 1024))
    assert values == 13_631_488 and 2 * 2 * 4 * values / 1e6 < fed.max_round_mb == 220


def _rows() -> pd.DataFrame:
    rows = []
    values = {
        ("full", "alpha=1"): [0.80, 0.90],
        ("lora", "alpha=1"): [0.70, 0.80],
        ("full", "alpha=0.1"): [0.60, 0.60],
        ("lora", "alpha=0.1"): [0.30, 0.60],
        ("lora", "centralized"): [0.95, 0.85],
    }
    for (method, setting), metrics in values.items():
        for seed, metric in enumerate(metrics):
            rows.append(
                {
                    "run": f"{method}-{setting}-{seed}",
                    "task": "t",
                    "method": method,
                    "setting": setting,
                    "alpha": None,
                    "seed": seed,
                    "status": "done",
                    "test_metric": metric,
                }
            )
    rows.append({**rows[0], "run": "pending", "status": "pending", "test_metric": float("nan")})
    return pd.DataFrame(rows)


def test_mean_std_and_relative_to_fedft_by_hand() -> None:
    table = mean_std(_rows())
    table["rel"] = relative_to_baseline(table)
    cell = {(r.method, r.setting): r for r in table.itertuples()}
    # mean, sample std (ddof 1) over the two seeds; the pending run is left out
    assert cell["full", "alpha=1"].mean == pytest.approx(0.85)
    assert cell["full", "alpha=1"].std == pytest.approx(math.sqrt(2 * 0.05**2))  # 0.0707
    assert cell["full", "alpha=1"].n == 2
    assert cell["lora", "alpha=0.1"].mean == pytest.approx(0.45)
    assert cell["lora", "alpha=0.1"].std == pytest.approx(0.2121320)
    assert cell["full", "alpha=0.1"].std == 0.0
    # relative to FedFT in the same setting: 0.75 / 0.85 and 0.45 / 0.60
    assert cell["lora", "alpha=1"].rel == pytest.approx(100 * 0.75 / 0.85)
    assert cell["lora", "alpha=0.1"].rel == pytest.approx(75.0)
    assert cell["full", "alpha=1"].rel == pytest.approx(100.0)
    assert math.isnan(cell["lora", "centralized"].rel)  # no centralized FedFT in this study


def test_a_null_grid_value_reads_none_in_the_report() -> None:
    from fedpet.study.report import render_markdown

    rows = _rows()
    rows["target_epsilon"] = [None if i % 2 else 8.0 for i in range(len(rows))]
    rows = rows.assign(metric_name="accuracy", mb_per_round=1.0, mb_total=2.0, trainable_params=3)
    headers = [x for x in render_markdown(rows, []).splitlines() if x.startswith("## t")]
    assert headers == ["## t, target_epsilon=8.0", "## t, target_epsilon=none"]


def test_plot_lines_split_by_algorithm_and_codec_only_where_they_vary() -> None:
    from fedpet.study.report import series_labels

    rows = pd.DataFrame(
        {
            "method": ["lora", "lora", "lora", "full"],
            "algorithm": ["fedavg"] * 4,
            "codec_up": ["fp32", "int8", "topk:0.1+int8", "fp32"],
            "codec_down": ["fp32"] * 4,
        }
    )
    labels = ["lora up=fp32", "lora up=int8", "lora up=topk:0.1+int8", "full up=fp32"]
    assert series_labels(rows).tolist() == labels
    rows["algorithm"] = ["fedavg", "fedprox", "fedavg", "fedavg"]
    assert series_labels(rows)[1] == "lora + fedprox up=int8"


def _mini_study(model: Path, path: Path, grid: dict, centralized: dict | None = None) -> Path:
    """A study file over the tiny model and a small slice of rotten_tomatoes."""
    study = {"base": tiny_study_base(model), "grid": grid}
    path.write_text(
        json.dumps(study if centralized is None else {**study, "centralized": centralized})
    )
    return path


@pytest.mark.integration  # 12 runs, then 2 more on resume
def test_a_study_runs_resumes_and_reports_identically(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = {"method.name": ["full", "lora"], "data.alpha": [0.5, 5.0], "seed": [0, 1]}
    spec = _mini_study(tiny_model_dir, tmp_path / "mini.yaml", grid, centralized={})
    out = tmp_path / "study"
    assert main(["study", "--config", str(spec), "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 12 and set(results["status"]) == {"done"}
    summary = json.loads((out / "runs" / "lora-alpha0.5-seed1" / "summary.json").read_text())
    row = results[results["run"] == "lora-alpha0.5-seed1"].iloc[0]
    assert row["test_metric"] == summary["test_metric"]
    assert (
        row["bytes_up_total"]
        == summary["bytes_up_total"]
        == 2 * 2 * 4 * summary["trainable_params"]
    )
    report = (out / "report.md").read_text()
    assert report.count("| setting | full | lora |") == 1  # one table: settings x methods
    assert "| alpha=0.5 |" in report and "| centralized |" in report
    for png in ("acc_vs_bytes.png", "acc_vs_alpha.png", "convergence.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # interrupted: one run lost its summary after its last checkpoint, another never started
    (out / "runs" / "full-alpha5.0-seed0" / "summary.json").unlink()
    shutil.rmtree(out / "runs" / "centralized-lora-seed1")
    capsys.readouterr()
    assert main(["study", "--config", str(spec), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier, skipped") == 10
    assert "full-alpha5.0-seed0: resuming" in log
    assert "centralized-lora-seed1: starting" in log

    before = (out / "report.md").read_text(), (out / "results.csv").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert ((out / "report.md").read_text(), (out / "results.csv").read_text()) == before


@pytest.mark.integration  # 4 runs
def test_a_study_with_dp_runs_reports_what_they_withhold_as_withheld(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    grid = {"method.name": ["lora", "full"], "privacy.enabled": [False, True]}
    spec = _mini_study(tiny_model_dir, tmp_path / "dp.yaml", grid)
    study = json.loads(spec.read_text())
    study["base"]["privacy"] = {"noise_multiplier": 0.5}
    study["base"]["federation"]["eval_every"] = 1
    spec.write_text(json.dumps(study))
    out = tmp_path / "study"
    assert main(["study", "--config", str(spec), "--out", str(out), "--quiet"]) == 0
    results = pd.read_csv(out / "results.csv").set_index(["method", "enabled"])
    assert results.loc[("lora", False), "mb_total"] > 0
    assert math.isnan(results.loc[("lora", True), "mb_total"])
    assert math.isnan(results.loc[("lora", True), "wall_seconds"])
    report = (out / "report.md").read_text()
    assert "one after another (runs under DP withhold theirs)." in report
    assert "| lora, enabled=True |" in report and "| withheld (DP) |" in report


def test_a_different_study_in_the_same_directory_is_refused(tmp_path: Path, capsys) -> None:
    from fedpet.study.runner import claim

    out = tmp_path / "s"
    claim(out, parse_study({"grid": {"seed": [0]}}, "a"))
    other = tmp_path / "b.yaml"
    other.write_text("grid: {seed: [1]}\n")
    assert "holds a different study" in refused(
        ["study", "--config", str(other), "--out", str(out)], capsys, keep=tmp_path
    )
    assert not (out / "runs").exists()


def test_bad_study_input_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {seed: [0]}\nbase: {data: {task: nope}}\n")
    assert "study run seed0: data.task = 'nope'" in refused(
        ["study", "--config", str(bad), "--out", str(tmp_path / "s")], capsys, keep=tmp_path
    )
    assert (
        "--preset 'fast': choose one of quick, cpu, algorithms, privacy, fedpetuning-glue"
        in refused(["study", "--preset", "fast"], capsys, keep=tmp_path)
    )
    assert "neither a study" in refused(["report", str(tmp_path)], capsys, keep=tmp_path)


def test_set_overrides_the_base_of_a_preset(tmp_path: Path, capsys) -> None:
    # a bad override is caught for every run before anything is written
    out = tmp_path / "s"
    argv = ["study", "--preset", "quick", "--out", str(out), "--set", "federation.rounds=0"]
    assert "study run full-alpha0.1: federation.rounds = 0" in refused(argv, capsys, keep=tmp_path)
    assert not out.exists()


def test_report_of_a_single_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, out, "--partition", "iid", samples=48)) == 0
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert report.startswith("# Run report")
    assert f"| iid | {100 * summary['test_metric']:.2f} |" in report  # one seed: no spread
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    for plot in ("lora_error.png", "aggregation_error.png"):  # a LoRA run logs both errors
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
        assert f"![{plot}]({plot})" in report
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lora_aggregation_error"] >= 0 and r["aggregation_error"] > 0 for r in rows)


def test_plot_error_bars_spread_over_the_seeds_of_one_setting_only() -> None:
    from fedpet.study.report import plot_cells

    rows = _rows()
    rows = rows[(rows["status"] == "done") & (rows["setting"] != "centralized")]
    rows = rows.assign(mb_total=rows["method"].map({"full": 900.0, "lora": 3.0}))
    rows = rows.assign(metric_name="accuracy")
    cells = plot_cells(rows, "mb_total", lines="setting")
    point = {r.series: r for r in cells.itertuples()}
    # lora at 3 MB: one point per alpha, each with the spread of its own two seeds, not
    # one point with the spread over both alphas (0.30, 0.60, 0.70, 0.80: std 0.22)
    assert point["lora, alpha=0.1"].std == pytest.approx(0.2121320)
    assert point["lora, alpha=1"].std == pytest.approx(math.sqrt(2 * 0.05**2))
    assert point["lora, alpha=1"].x == 3.0 and point["lora, alpha=1"].n == 2
    assert len(cells) == 4


def test_a_data_scale_plot_has_a_point_per_size_not_a_mean_over_sizes() -> None:
    from fedpet.study.report import plot_cells

    rows = pd.DataFrame(
        [
            {"task": "t", "method": "lora", "setting": "alpha=1", "max_train_samples": size}
            | {"seed": seed, "test_metric": acc, "metric_name": "accuracy"}
            for size, seed, acc in [(200, 0, 0.5), (200, 1, 0.6), (2000, 0, 0.8), (2000, 1, 0.8)]
        ]
    )
    cells = plot_cells(rows, "max_train_samples", lines="setting")
    assert cells[["x", "mean", "n"]].values.tolist() == [[200, 0.55, 2], [2000, 0.8, 2]]
    assert cells["std"].tolist() == pytest.approx([math.sqrt(2 * 0.05**2), 0.0])


def test_a_single_seed_shows_no_spread_in_the_report() -> None:
    from fedpet.study.report import render_markdown

    rows = _rows()
    rows = rows[rows["seed"] == 0].assign(
        metric_name="accuracy", mb_per_round=1.0, mb_total=2.0, trainable_params=3
    )
    report = render_markdown(rows, [])
    table = [line for line in report.splitlines() if line.startswith("| alpha=")]
    assert "| alpha=1 | 80.00 | 70.00 (87.5%) |" in table and not any("±" in x for x in table)


def test_dry_run_lists_the_runs_and_estimates_them_writing_nothing(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = {"method.name": ["lora", "bitfit"], "seed": [0, 1]}
    spec = _mini_study(tiny_model_dir, tmp_path / "mini.yaml", grid)
    out = tmp_path / "study"
    argv = ["study", "--config", str(spec), "--out", str(out), "--dry-run"]
    assert main([*argv, "--set", "grid.seed=[0]"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"2 runs planned in {out}; 0 finished, 2 to run"
    assert sum(line.startswith("measured rotten_tomatoes · ") for line in said) == 2
    assert [line.split(":")[0].strip() for line in said if line.startswith("  ")] == [
        "lora-seed0",
        "bitfit-seed0",
    ]
    assert said[-1].startswith("estimate: ") and "for the 2 runs left" in said[-1]
    assert not out.exists()


def test_report_compares_run_directories_and_draws_an_unfinished_run(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(run_argv(tiny_model_dir, a, samples=48)) == 0
    assert main(run_argv(tiny_model_dir, b, "--method", "bitfit", samples=48)) == 0
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "2 runs planned: 2 done" in report
    assert "| lora |" in report and "| bitfit |" in report  # the communication table
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    (b / "summary.json").unlink()  # as a run still going, or stopped
    assert main(["report", str(b)]) == 0
    assert "1 runs planned: 0 done, 1 partial" in (b / "report.md").read_text()
    assert (b / "convergence.png").read_bytes()[:4] == b"\x89PNG"
