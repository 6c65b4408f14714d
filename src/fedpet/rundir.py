"""The run directory: config, partition, per-round metrics, atomic checkpoints, summary."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file

from fedpet.config import Config, to_dict
from fedpet.errors import FedpetError
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
)


def default_run_dir(cfg: Config, kind: str = "run") -> Path:
    """Where a run goes unless ``--out`` says otherwise, under the current directory.

    ``runs/<task>-<method>[-centralized]-<timestamp>``, or for ``kind="partition"``
    ``runs/<task>-<partition>-partition-<timestamp>``.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if kind == "partition":
        return Path("runs") / f"{cfg.data.task}-{cfg.data.partition}-partition-{stamp}"
    mode = "-centralized" if cfg.centralized else ""
    return Path("runs") / f"{cfg.data.task}-{cfg.method.name}{mode}-{stamp}"


def check_out_dir(path: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, or a directory holding a run unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise FedpetError(f"out = {str(path)!r} is a file; give a directory path")
    holds_run = path.is_dir() and any((path / name).exists() for name in RUN_FILES)
    if holds_run and not overwrite:
        raise FedpetError(
            f"out = {str(path)!r} already holds a run; choose another --out or pass --overwrite"
        )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_tensors(path: Path, state: TrainableState) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


class RunDir:
    """Writer of one run directory (created on the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = path / "checkpoint"

    def create(self, overwrite: bool) -> None:
        """Make the directory; with ``overwrite``, first remove the previous run's files."""
        if overwrite:
            for name in RUN_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        self.checkpoint.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: Config) -> None:
        """The resolved config; ``fedpet run --config`` of this file repeats the run."""
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        _write_text(self.path / "config.yaml", text)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """A JSON file in the run directory, written atomically."""
        _write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (flushed to disk before returning)."""
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_checkpoint(self, tensors: dict[str, TrainableState], state: dict[str, Any]) -> None:
        """Each named state as ``<name>.safetensors``, then ``state.json`` (the commit point)."""
        for name, values in tensors.items():
            _write_tensors(self.checkpoint / f"{name}.safetensors", values)
        _write_text(self.checkpoint / "state.json", json.dumps(state, indent=2) + "\n")
