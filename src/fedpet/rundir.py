"""The run directory: config, partition, per-round metrics, atomic checkpoints, summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from fedpet.config import Config, to_dict
from fedpet.errors import FedpetError
from fedpet.files import atomic_write, storage_errors
from fedpet.state import TrainableState

PARTITION_HEATMAP = "partition_labels.png"
PARTITION_HISTOGRAM = "partition_sizes.png"
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "partition.json",
    PARTITION_HEATMAP,
    PARTITION_HISTOGRAM,
    "checkpoint",
    "clients",
    "clients.csv",
    "tracking.json",
    "tensorboard",
    "wandb",
)


def default_run_dir(cfg: Config, kind: str = "run") -> Path:
    """Where a run goes unless ``--out`` says otherwise, under the current directory.

    ``runs/<task>-<method>[-centralized]-<timestamp>``, or for ``kind="partition"``
    ``runs/<task>-<partition>-partition-<timestamp>``.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    task = task_slug(cfg.data.task)
    if kind == "partition":
        return Path("runs") / f"{task}-{cfg.data.partition}-partition-{stamp}"
    mode = "-centralized" if cfg.centralized else ""
    return Path("runs") / f"{task}-{cfg.method.name}{mode}-{stamp}"


def task_slug(task: str) -> str:
    """A task's name as a folder name: ``file:data/my reviews.csv`` -> ``my_reviews``."""
    name = Path(task.removeprefix("file:")).stem if task.startswith("file:") else task
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def check_out_dir(path: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, or a directory holding a run unless ``overwrite``.

    A path where no directory can be written fails here, before any data or model is
    loaded; nothing is left behind by the check.
    """
    if path.exists() and not path.is_dir():
        raise FedpetError(f"out = {str(path)!r} is a file; give a directory path")
    holds_run = path.is_dir() and any((path / name).exists() for name in RUN_FILES)
    if holds_run and not overwrite:
        raise FedpetError(
            f"out = {str(path)!r} already holds a run; choose another --out or pass --overwrite"
        )
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(base))
        tempfile.TemporaryDirectory(dir=base).cleanup()  # can a directory be made here?
    except OSError as exc:
        raise FedpetError(
            f"out = {str(path)!r}: cannot create the directory ({exc.strerror or exc})"
        ) from None


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_tensors(path: Path, state: TrainableState, round_: int) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    # serialized here and written by Python, so that a failed write is an OSError
    data = save(tensors, metadata={"round": str(round_)})
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


class RunDir:
    """Writer of one run directory (created on the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = path / "checkpoint"

    def create(self, overwrite: bool) -> None:
        """Make the directory; with ``overwrite``, first remove the previous run's files."""
        with storage_errors(self.path):
            for name in RUN_FILES if overwrite else ():
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            self.checkpoint.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: Config) -> None:
        """The resolved config; ``fedpet run --config`` of this file repeats the run."""
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        with storage_errors(self.path):
            _write_text(self.path / "config.yaml", text)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """A JSON file in the run directory, written atomically."""
        with storage_errors(self.path):
            _write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """A text file in the run directory, written atomically."""
        with storage_errors(self.path):
            _write_text(self.path / name, text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (flushed to disk before returning)."""
        metrics = self.path / "metrics.jsonl"
        with storage_errors(self.path), metrics.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_checkpoint(self, tensors: dict[str, TrainableState], state: dict[str, Any]) -> None:
        """Write a round's checkpoint so that a kill at any instant leaves a consistent one.

        Each named state goes to ``<name>.next.safetensors`` (stamped with the round), then
        ``state.json`` commits the round, then the files are renamed to ``<name>.safetensors``.
        :func:`load_checkpoint` takes, per name, whichever file carries the committed round.
        """
        round_ = int(state["round"])
        with storage_errors(self.path):
            for name, values in tensors.items():
                _write_tensors(self.checkpoint / f"{name}.next.safetensors", values, round_)
            _write_text(self.checkpoint / "state.json", json.dumps(state, indent=2) + "\n")
        for name in tensors:
            os.replace(
                self.checkpoint / f"{name}.next.safetensors",
                self.checkpoint / f"{name}.safetensors",
            )


@dataclass(frozen=True)
class Checkpoint:
    """The last complete round of a run, as written by :meth:`RunDir.write_checkpoint`."""

    round: int
    state: dict[str, Any]
    tensors: dict[str, TrainableState]


def _unreadable(path: Path, exc: Exception) -> FedpetError:
    return FedpetError(
        f"run directory {str(path)!r}: no readable checkpoint ({exc.__class__.__name__}); "
        "a run has one once its first round has finished"
    )


def checkpoint_round(path: Path) -> int:
    """The last complete round of a run directory's checkpoint, from its state.json alone."""
    try:
        state = json.loads((path / "checkpoint" / "state.json").read_text(encoding="utf-8"))
        return int(state["round"])
    except (OSError, ValueError, KeyError) as exc:
        raise _unreadable(path, exc) from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a run directory's checkpoint (safetensors only: nothing is unpickled)."""
    folder = path / "checkpoint"
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        round_ = int(state["round"])
        tensors: dict[str, TrainableState] = {}
        names = {f.name.split(".")[0] for f in folder.glob("*.safetensors")}
        for name in sorted(names):
            for file in (folder / f"{name}.next.safetensors", folder / f"{name}.safetensors"):
                if file.exists() and _stamped_round(file) == round_:
                    tensors[name] = load_file(str(file))
                    break
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _unreadable(path, exc) from None
    if "global" not in tensors or "best" not in tensors:
        raise FedpetError(
            f"run directory {str(path)!r}: the checkpoint of round {round_} is incomplete"
        )
    return Checkpoint(round_, state, tensors)


def _stamped_round(file: Path) -> int:
    with safe_open(str(file), framework="pt") as fh:
        return int((fh.metadata() or {}).get("round", -1))


def finished_summary(path: Path) -> dict[str, Any] | None:
    """The ``summary.json`` of a run directory whose run has finished; None otherwise."""
    try:
        summary: dict[str, Any] = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FedpetError(
            f"run directory {str(path)!r}: summary.json cannot be read "
            f"({exc.__class__.__name__}); remove it to finish the run again with --resume"
        ) from None
    return summary


def keep_metrics(path: Path, rounds: int) -> None:
    """Cut ``metrics.jsonl`` to its first ``rounds`` lines.

    A round logged after the last checkpoint is run again, so it must not stay twice.
    """
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)[:rounds]
    with storage_errors(path):
        atomic_write(metrics, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))
