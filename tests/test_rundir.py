"""Checkpoints stay consistent whenever a write is cut short."""

import json
import os
from pathlib import Path

import pytest
import torch

from fedpet.errors import FedpetError
from fedpet.rundir import RunDir, _write_tensors, load_checkpoint


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), value)}


def checkpoint(tmp_path: Path, round_: int) -> RunDir:
    run = RunDir(tmp_path)
    run.create(overwrite=False)
    run.write_checkpoint({"global": state(round_), "best": state(-round_)}, {"round": round_})
    return run


def test_a_complete_checkpoint_loads_with_its_round(tmp_path: Path) -> None:
    checkpoint(tmp_path, 3)
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 3 and torch.equal(loaded.tensors["global"]["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "best.safetensors",
        "global.safetensors",
        "state.json",
    ]


def test_killed_before_the_commit_keeps_the_previous_round(tmp_path: Path) -> None:
    run = checkpoint(tmp_path, 3)
    _write_tensors(run.checkpoint / "global.next.safetensors", state(4), 4)  # then killed
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 3 and loaded.tensors["global"]["w"][0].item() == 3.0


def test_killed_after_the_commit_takes_the_new_round(tmp_path: Path) -> None:
    run = checkpoint(tmp_path, 3)
    for name, value in (("global", 4.0), ("best", -4.0)):
        _write_tensors(run.checkpoint / f"{name}.next.safetensors", state(value), 4)
    (run.checkpoint / "state.json").write_text(json.dumps({"round": 4}))
    os.replace(run.checkpoint / "best.next.safetensors", run.checkpoint / "best.safetensors")
    loaded = load_checkpoint(tmp_path)  # killed before global was renamed
    assert loaded.round == 4
    assert loaded.tensors["global"]["w"][0].item() == 4.0
    assert loaded.tensors["best"]["w"][0].item() == -4.0


def test_no_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FedpetError, match="no readable checkpoint"):
        load_checkpoint(tmp_path)
