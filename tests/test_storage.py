"""A full or unwritable output directory gives one line and exit 2; the checkpoint survives."""

import errno
import json
from pathlib import Path

import pytest
from helpers import refused, run_argv

from fedpet import rundir
from fedpet.cli import main
from fedpet.rundir import load_checkpoint


def argv(model: Path, out: Path) -> list[str]:
    return run_argv(model, out, rounds=3)


def test_disk_full_mid_run_keeps_the_last_checkpoint(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    real = rundir.atomic_write

    def fills_up_in_round_2(path: Path, write) -> None:
        state = out / "checkpoint" / "state.json"
        committed = state.exists() and json.loads(state.read_text())["round"] == 1
        if committed and path.name == "global.next.safetensors":
            # what a full disk does: the write fails after leaving part of the file behind
            def partial(tmp: Path) -> None:
                tmp.write_bytes(b"\0" * 10)
                raise OSError(errno.ENOSPC, "No space left on device")

            return real(path, partial)
        return real(path, write)

    monkeypatch.setattr(rundir, "atomic_write", fills_up_in_round_2)
    assert main(argv(tiny_model_dir, out)) == 2
    *progress, err = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("fedpet run: error: cannot write ")
    assert not any("Traceback" in line for line in progress)
    assert "global.next.safetensors (No space left on device)" in err
    assert "the checkpoint of round 1 is intact" in err and "--resume" in err
    assert not list((out / "checkpoint").glob(".*"))  # no temporary file left behind
    assert load_checkpoint(out).round == 1

    monkeypatch.setattr(rundir, "atomic_write", real)
    assert main(["run", "--resume", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("where", ["a-file/run", "/proc/fedpet-run"])
def test_an_unwritable_out_dir_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    err = refused(["run", "--out", where, "--model", "no-such-model"], capsys, keep=tmp_path)
    assert "cannot create the directory" in err
