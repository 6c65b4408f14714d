"""The command line: bad input gives one line and exit status 2, and writes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import refused

from fedpet.cli import main


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "lorax"], "method.name = 'lorax'"),
        (["--task", "imdb"], "data.task = 'imdb'"),
        (["--partition", "shuffled"], "data.partition = 'shuffled'"),
        (["--clients", "4", "--clients-per-round", "5"], "federation.clients_per_round = 5"),
        (["--alpha", "0"], "data.alpha = 0.0"),
        (["--alpha", "-0.5"], "data.alpha = -0.5"),
        (["--rounds", "0"], "federation.rounds = 0"),
        (["--rounds", "two"], "argument --rounds: invalid int value: 'two'"),
        (["--optimizer", "adam"], "train.optimizer = 'adam'"),
        (["--config", "/nonexistent/c.yaml"], "config: cannot read"),
        (["--set", "train.nope=1"], "train.nope: unknown field"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    assert needle in refused(["run", "--out", str(out), *args], capsys, keep=tmp_path)
    assert not out.exists()


@pytest.mark.integration
def test_bad_input_from_a_real_process_is_one_line_and_status_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedpet.cli", "run", "--alpha", "0", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedpet run: error: data.alpha = 0.0 is not allowed: a number > 0 "
        "(smaller = stronger label skew)"
    ]


def test_existing_run_is_not_overwritten_without_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"test_metric": 0.9}))
    err = refused(["run", "--out", str(out)], capsys, keep=tmp_path)
    assert "already holds a run" in err and "--overwrite" in err
    assert json.loads((out / "summary.json").read_text()) == {"test_metric": 0.9}
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_offline_hub_id_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(
        ["run", "--model", "roberta-base-not-cached", "--out", str(tmp_path / "r")],
        capsys,
        keep=tmp_path,
    )
    assert "model = 'roberta-base-not-cached' could not be loaded" in err
    assert "offline" in err
    assert not (tmp_path / "r").exists()


def test_partition_command_prints_a_summary_and_writes_json_and_pngs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "part"
    args = ["partition", "--clients", "20", "--alpha", "0.5", "--max-train-samples", "1000"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "20 clients, sizes min 50 / median 50 / max 50" in text
    report = json.loads((out / "partition.json").read_text())
    assert len(report["clients"]) == 20 and report["alpha"] == 0.5
    assert sum(c["size"] for c in report["clients"]) == 1000
    assert f"label skew {report['label_skew']:.3f}" in text
    for png in ("partition_labels.png", "partition_sizes.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "already holds a run" in refused([*args, "--out", str(out)], capsys, keep=tmp_path)


def test_partition_that_cannot_meet_the_minimum_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "part"
    args = ["partition", "--clients", "50", "--max-train-samples", "100", "--out", str(out)]
    err = refused([*args, "--set", "data.min_client_size=5"], capsys, keep=tmp_path)
    assert "data.min_client_size = 5" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-length", "129"], "data.max_length = 129 is not allowed: model "),
        (
            ["--max-length", "120", "--method", "prompt"],
            "takes at most 128 tokens, 118 after method prompt's 10 virtual tokens",
        ),
        (
            ["--max-length", "128", "--method", "prefix"],
            "takes at most 128 tokens, 118 after method prefix's 10 virtual tokens",
        ),
    ],
)
def test_max_length_beyond_the_model_positions_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, needle
) -> None:
    argv = ["run", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), *args]
    err = refused([*argv, "--max-train-samples", "20", "--clients", "2"], capsys, keep=tmp_path)
    assert needle in err


def test_prefix_tuning_at_its_longest_length_fits_the_positions_and_one_more_does_not(
    tiny_config,
) -> None:
    import torch

    from fedpet.model import build_model

    model, _ = build_model(tiny_config(**{"method.name": "prefix", "data.max_length": 118}), 2)
    ids = torch.ones(1, 118, dtype=torch.long)
    assert model(ids, torch.ones_like(ids)).shape == (1, 2)  # positions 10 to 127
    ids = torch.ones(1, 119, dtype=torch.long)
    with pytest.raises((IndexError, RuntimeError)):  # the 10 prefix positions come first
        model(ids, torch.ones_like(ids))


def test_an_uncached_hub_id_with_the_hub_unreachable_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline, but not told so
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    began = time.perf_counter()
    err = refused(
        ["run", "--model", "someone/not-cached", "--out", str(tmp_path / "r")],
        capsys,
        keep=tmp_path,
    )
    seconds = time.perf_counter() - began
    assert err.startswith("fedpet run: error: model = 'someone/not-cached' could not be loaded")
    assert "offline only a local directory or a cached model" in err
    print(f"refused after {seconds:.2f} s")  # the hub client's retries took ~27 s here
