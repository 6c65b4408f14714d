"""What a user meets day to day: round lines in a log, --quiet, templates, dry runs, names."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import refused, run_argv

from fedpet.cli import main
from fedpet.config import load_yaml
from fedpet.progress import RoundEnd, duration, round_line
from fedpet.rundir import default_run_dir


@pytest.mark.integration  # a run in a subprocess
def test_round_lines_reach_a_log_file_as_each_round_ends(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"
    argv = run_argv(tiny_model_dir, tmp_path / "run", "--set", "federation.eval_every=2", rounds=3)
    seen_early = False  # round 1's line in the file before round 3's was written
    with log.open("w") as fh:  # stdout is a file, as under nohup or SLURM
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user has
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedpet.cli", *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        while proc.poll() is None and not seen_early:
            text = log.read_text()
            seen_early = "round 1/3" in text and "round 3/3" not in text
            time.sleep(0.02)
        assert proc.wait(timeout=300) == 0
    assert seen_early  # block-buffered output would arrive all at once, at exit
    lines = log.read_text().splitlines()
    assert lines[0].startswith("fedpet: rotten_tomatoes · lora on ")
    assert "4 clients, 2 per round, 3 rounds, fedavg · cpu fp32" in lines[0]
    rounds = [line for line in lines if line.startswith("round ")]
    assert [r.split(" · ")[0] for r in rounds] == ["round 1/3", "round 2/3", "round 3/3"]
    assert "not validated" in rounds[0] and "val accuracy" in rounds[1]
    assert "ETA" in rounds[1] and "ETA" not in rounds[2]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert f"loss {metrics[0]['train_loss']:.4f}" in rounds[0]
    assert f"{metrics[0]['bytes_up'] / 1e6:.2f} MB up" in rounds[0]
    assert not any("\x1b[" in line for line in lines)  # no terminal codes in a file


def test_quiet_prints_only_the_result(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(run_argv(tiny_model_dir, tmp_path / "run", "--quiet")) == 0
    out = capsys.readouterr().out
    assert "round 1/2" not in out and "fedpet: rotten_tomatoes" not in out
    assert "test accuracy" in out and "run directory" in out


def test_round_line_and_duration() -> None:
    end = RoundEnd(3, 10, "round", "mcc", {"val_mcc": 0.25, "train_seconds": 2.0}, 3, 0.25)
    assert (
        round_line(end, 75.0) == "round 3/10 · val mcc 0.2500 (best 0.2500 @ 3) · 2.0 s · ETA 1m15s"
    )
    assert (duration(59), duration(3700)) == ("59s", "1h01m")
    scored = {"val_mcc": 0.25, "client_test_mean": 0.5, "client_test_p10": 0.125}
    scored |= {"client_test_worst": 0.0, "personal_test_mean": 0.75, "personal_test_p10": 0.5}
    scored |= {"personal_test_worst": 0.25}
    line = round_line(RoundEnd(3, 3, "round", "mcc", scored, 3, 0.25), None)
    assert "clients' global mean 0.5000, p10 0.1250, worst 0.0000" in line
    assert line.endswith("clients' personal mean 0.7500, p10 0.5000, worst 0.2500 · 0.0 s")


def test_a_config_yaml_as_a_template_gets_the_new_method_s_lr(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, run, rounds=1)) == 0
    saved = load_yaml(run / "config.yaml")
    assert saved["train"]["lr"] == 2e-3 and "train.lr" in saved["filled"]
    capsys.readouterr()
    assert (
        main(["run", "--config", str(run / "config.yaml"), "--method", "adapter", "--dry-run"]) == 0
    )
    dry = yaml.safe_load(capsys.readouterr().out)
    assert dry["train"]["lr"] == 1e-3  # the adapter's default, not LoRA's
    assert dry["federation"]["rounds"] == 1  # the rest of the template is kept
    explicit = tmp_path / "explicit"
    assert main(run_argv(tiny_model_dir, explicit, "--lr", "0.05", rounds=1)) == 0
    capsys.readouterr()
    argv = ["run", "--config", str(explicit / "config.yaml"), "--method", "adapter", "--dry-run"]
    assert main(argv) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["lr"] == 0.05  # given, so kept


def test_dry_run_checks_the_data(tmp_path: Path, capsys) -> None:
    data = tmp_path / "reviews.csv"
    data.write_text("review,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(200)))
    argv = ["run", "--task", f"file:{data}", "--clients", "4", "--dry-run"]
    assert "has no text column 'text'" in refused(argv, capsys, keep=tmp_path)
    argv += ["--set", "data.text_column=review"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "# checked: 160 train / 20 validation / 20 test examples, labels ['0', '1']" in out


def test_a_file_task_s_run_folder_is_one_plain_name(tmp_path: Path) -> None:
    from fedpet.configure import build_config

    cfg = build_config({"data": {"task": f"file:{tmp_path}/my reviews.v2.csv"}})
    path = default_run_dir(cfg)
    assert path.parent == Path("runs")
    assert path.name.startswith("my_reviews.v2-lora-") and ":" not in path.name


def test_version_and_a_study_without_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "fedpet 0.1.0"
    assert refused(["study"], capsys) == (
        "fedpet study: error: give the study to run: --preset NAME (fedpet presets lists "
        "them) or --config study.yaml"
    )


def test_help_of_registered_names_lists_them(capsys) -> None:
    from fedpet.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_ = " ".join(capsys.readouterr().out.split())
    for name in ("rotten_tomatoes", "sst2", "file:PATH", "dirichlet", "natural", "scaffold"):
        assert name in help_
    assert "runs/<task>-<partition>-partition-<time>" in help_


def test_presets_list_show_and_copy(tmp_path: Path, capsys) -> None:
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("quick ") and "fedpetuning-glue" in listed
    assert main(["presets", "cpu"]) == 0
    assert (
        "method.name: [full, adapter, lora, prefix, bitfit, prompt, ia3]" in capsys.readouterr().out
    )
    copy = tmp_path / "mine.yaml"
    assert main(["presets", "quick", "--copy", str(copy)]) == 0
    assert "give at least one value" in refused(
        ["study", "--config", str(copy), "--dry-run", "--set", "grid.method.name=[]"],
        capsys,
        keep=tmp_path,
    )
    assert "exists" in refused(["presets", "quick", "--copy", str(copy)], capsys, keep=tmp_path)


@pytest.mark.integration
def test_ctrl_c_says_which_round_is_kept_and_how_to_continue(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import signal
    import time

    out = tmp_path / "run"
    argv = run_argv(tiny_model_dir, out, "--quiet", rounds=200)
    # a child inherits an ignored SIGINT (an earlier test's Ray or Flower may leave the
    # suite ignoring it), and Python then never raises KeyboardInterrupt: start it as a
    # terminal would, with the default disposition
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpet.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)  # the run has 200 rounds: it is still going
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    done = json.loads(state.read_text())["round"]
    assert f"fedpet: round {done} is checkpointed in {out}; continue with: " in err
    assert f"fedpet run --resume {out}" in err and err.strip().endswith("fedpet: interrupted")


def test_an_adapter_model_is_built_without_the_none_activated_warning(tiny_config) -> None:
    import logging

    from fedpet.model import build_model

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    kept, logger = Kept(), logging.getLogger("adapters.model_mixin")
    logger.addHandler(kept)
    try:
        build_model(tiny_config(**{"method.name": "adapter"}), 2)
    finally:
        logger.removeHandler(kept)
    assert not [m for m in kept.messages if "none are activated" in m]


def test_the_bar_follows_the_clients_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from fedpet.progress import RunDisplay, RunStart

    screen = io.StringIO()
    display = RunDisplay(console=Console(file=screen, force_terminal=True, width=120))
    start = RunStart(
        "t", "m", "lora", 10, 100, 4, 2, 3, "round", "fedavg", "cpu", "fp32", "o", 0, {}
    )
    display.start(start)
    display.progress(1, 2)
    assert display.bar is not None
    [task] = display.bar.tasks
    assert (task.completed, task.total, task.description) == (1, 2, "round 1/3")
    row = {"train_loss": 0.5, "train_seconds": 1.0}
    display.round_end(RoundEnd(1, 3, "round", "accuracy", row, 0, float("-inf")))
    [task] = display.bar.tasks
    assert (task.completed, task.description) == (0, "round 2/3")  # reset for the next
    display.close()
    assert "round 1/3 · not validated · loss 0.5000" in screen.getvalue()
