"""fedpet's public Python API: build a config, run it, read the results, add extensions.

Example
-------
>>> from fedpet import api
>>> cfg = api.config({"data.max_train_samples": 400, "federation.rounds": 3})
>>> result = api.run(cfg, out="runs/notebook", overwrite=True)  # doctest: +SKIP
>>> result.summary["test_metric"], result.series("bytes_up")  # doctest: +SKIP

Everything a run does is the same as ``fedpet run`` with the same config: the run
directory, its files and its figures. Extensions registered here (or by a plugin module,
see :func:`load_plugin`) are usable by name in configs, in the API and on the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpet.algorithms import Algorithm, ClientHook, Needs, PlainAlgorithm, register_algorithm
from fedpet.codecs import Values, register_codec
from fedpet.config import AlgorithmOptions, Config, MethodOptions, load_yaml, option, to_dict
from fedpet.configure import build_config, resolve
from fedpet.launch import resume_run, run_config, start_run
from fedpet.methods import Method, MethodBase, register_method
from fedpet.plugins import load_plugin
from fedpet.rundir import default_run_dir
from fedpet.runtime.pipeline import register_stage
from fedpet.stages import Stage
from fedpet.study.runner import entries, run_study
from fedpet.study.spec import load_study, parse_study, plan


def config(
    overrides: Mapping[str, Any] | None = None, base: str | Path | Mapping[str, Any] | None = None
) -> Config:
    """A checked, resolved config, as ``fedpet run`` would build it.

    fedpet's defaults, then ``base`` (a YAML file's path, or a nested mapping as in one),
    then ``overrides``: dotted field names and values, as ``--set`` gives them
    (``{"method.name": "lora", "method.r": 16}``). Bad input raises
    :class:`~fedpet.errors.FedpetError` with the field, its value and what is allowed.
    """
    tree = load_yaml(base) if isinstance(base, str | Path) else dict(base or {})
    return resolve(build_config(tree, list((overrides or {}).items())))


@dataclass(frozen=True)
class RunResult:
    """A run's directory, config, summary (``summary.json``) and rounds (``metrics.jsonl``)."""

    out: Path
    config: Config
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]

    def series(self, name: str) -> list[Any]:
        """One figure of every round (e.g. ``val_accuracy``, ``bytes_up``); None where absent."""
        return [row.get(name) for row in self.rounds]


def load_run(out: str | Path) -> RunResult:
    """The results of the run in ``out`` (finished: its summary; else an empty one)."""
    out = Path(out)
    metrics = out / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return RunResult(out, run_config(out), summary, rows)


def run(cfg: Config, out: str | Path | None = None, overwrite: bool = False) -> RunResult:
    """Run ``cfg`` (federated, or centralized if it says so) into ``out``; its results.

    ``out`` defaults to the config's ``out``, else ``runs/<task>-<method>-...`` as on the CLI;
    an existing run directory is refused unless ``overwrite``.
    """
    where = Path(out) if out is not None else Path(cfg.out) if cfg.out else default_run_dir(cfg)
    start_run(cfg, where, overwrite)
    return load_run(where)


def centralized(cfg: Config, out: str | Path | None = None, overwrite: bool = False) -> RunResult:
    """Train ``cfg``'s method on the union of the clients' data: the baseline of a study."""
    tree = {**to_dict(cfg), "centralized": True}
    return run(resolve(build_config(tree)), out, overwrite)


def resume(out: str | Path) -> RunResult:
    """Continue the stopped run in ``out`` from its last checkpoint; its results."""
    resume_run(Path(out))
    return load_run(out)


@dataclass(frozen=True)
class StudyResult:
    """A study's directory, the report files it wrote, and every run's results by name."""

    out: Path
    files: list[str]
    runs: dict[str, RunResult]


def study(
    spec: str | Path | Mapping[str, Any] | None = None,
    out: str | Path = "studies/api",
    preset: str | None = None,
) -> StudyResult:
    """Run (or continue) a study: a study file's path, its content as a mapping, or a preset.

    See docs/guides/studies.md for the file's fields (``base``, ``grid``, ``rules``,
    ``centralized``); the runs and the report go into ``out``.
    """
    if isinstance(spec, Mapping):
        planned = parse_study(spec, "the study mapping")
    else:
        planned = load_study(spec, preset)
    out = Path(out)
    files = run_study(planned, out)
    runs = {run.name: load_run(run_dir) for run, run_dir in entries(out, plan(planned))}
    return StudyResult(out, files, runs)


__all__ = [
    "Algorithm",
    "AlgorithmOptions",
    "ClientHook",
    "Config",
    "Method",
    "MethodBase",
    "MethodOptions",
    "Needs",
    "PlainAlgorithm",
    "RunResult",
    "Stage",
    "StudyResult",
    "Values",
    "centralized",
    "config",
    "load_plugin",
    "load_run",
    "option",
    "register_algorithm",
    "register_codec",
    "register_method",
    "register_stage",
    "resume",
    "run",
    "study",
]
