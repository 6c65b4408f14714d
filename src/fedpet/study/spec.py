"""A study file: a base config, a grid over any config fields, rules, centralized baselines.

```yaml
base:                      # any run config (the sections of config.yaml)
  federation: {clients: 10, clients_per_round: 5, rounds: 8}
grid:                      # dotted field -> values; every combination is one run
  method.name: [full, lora]
  data.alpha: [0.1, 1.0]
  seed: [0, 1]
rules:                     # settings for the runs whose fields match ``when``
  - when: {method.name: full}
    set: {train.lr: 5.0e-5}
centralized:               # optional: one centralized run per combination of the grid's
  train.epochs: 2          # non-federated fields, with these settings
```
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedpet.config import Config, load_yaml
from fedpet.configure import build_config, resolve
from fedpet.errors import FedpetError

PRESETS = ("quick", "cpu", "algorithms", "privacy", "fedpetuning-glue")
# fields that only mean something in a federation: a centralized baseline ignores them
FEDERATED_FIELDS = ("data.alpha", "data.partition", "federation.", "algorithm.", "codec.")
FEDERATED_ONLY = ("train.local_epochs", "faults.")
SHORT_NAMES = {"method.name": "method", "data.task": "task", "algorithm.name": "algorithm"}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its directory name, the grid values it takes, its config."""

    name: str
    varied: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]
    rules: list[tuple[dict[str, Any], dict[str, Any]]]
    centralized: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """The study as written to ``study.yaml`` in its directory."""
        return {
            "base": self.base,
            "grid": self.grid,
            "rules": [{"when": w, "set": s} for w, s in self.rules],
            "centralized": self.centralized,
        }


def preset_text(name: str) -> str:
    """The packaged study file ``name``, as written (with its comments)."""
    if name not in PRESETS:
        raise FedpetError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    return (resources.files("fedpet.presets") / f"{name}.yaml").read_text(encoding="utf-8")


def load_study(path: str | Path | None = None, preset: str | None = None) -> Study:
    """Read a study file, or a packaged preset by name."""
    if preset is not None:
        return parse_study(yaml.safe_load(preset_text(preset)), f"preset {preset}")
    if path is None:
        raise FedpetError("give a study file (--config study.yaml) or --preset NAME")
    return parse_study(load_yaml(path), str(path))


def parse_study(data: Mapping[str, Any], where: str) -> Study:
    """Check the shape of a study mapping; the runs' configs are checked by :func:`plan`."""
    unknown = sorted(set(data) - {"base", "grid", "rules", "centralized"})
    if unknown:
        raise FedpetError(
            f"{where}: unknown key {unknown[0]!r}; allowed: base, grid, rules, centralized"
        )
    base = data.get("base") or {}
    grid = data.get("grid") or {}
    if not isinstance(base, Mapping):
        raise FedpetError(f"{where}: base must be a mapping of config sections")
    if not isinstance(grid, Mapping) or not all(isinstance(v, list) and v for v in grid.values()):
        raise FedpetError(f"{where}: grid must map dotted fields to non-empty lists of values")
    rules = []
    for rule in data.get("rules") or []:
        if not (isinstance(rule, Mapping) and set(rule) == {"when", "set"}):
            raise FedpetError(
                f"{where}: each rule is {{when: {{field: value}}, set: {{field: value}}}}"
            )
        if not isinstance(rule["when"], Mapping) or not isinstance(rule["set"], Mapping):
            raise FedpetError(f"{where}: a rule's when and set map dotted fields to values")
        rules.append((dict(rule["when"]), dict(rule["set"])))
    centralized = data.get("centralized")
    if centralized is not None and not isinstance(centralized, Mapping):
        raise FedpetError(f"{where}: centralized must be a mapping of settings ({{}} for none)")
    return Study(
        dict(base),
        {str(k): list(v) for k, v in grid.items()},
        rules,
        None if centralized is None else dict(centralized),
    )


def _federated(field: str) -> bool:
    return field.startswith(FEDERATED_FIELDS) or field.startswith(FEDERATED_ONLY)


def _slug(varied: Mapping[str, Any]) -> str:
    """A folder name a shell handles as it is: ``lora-alpha0.1-seed0`` (no = , or spaces).

    The method, task and algorithm are named by their value; other fields by their last
    part and value.
    """
    parts = [
        str(v) if k in SHORT_NAMES else f"{k.rsplit('.', 1)[-1]}{v}" for k, v in varied.items()
    ]
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts)).strip("_") or "run"


def _matches(when: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in when.items())


def _config(study: Study, name: str, varied: dict[str, Any], extra: Mapping[str, Any]) -> Config:
    overrides = [*varied.items(), *extra.items()]
    flat = dict(overrides)
    for when, settings in study.rules:
        if _matches(when, flat):
            overrides.extend(settings.items())
    try:
        return resolve(build_config(study.base, overrides))
    except FedpetError as exc:
        raise FedpetError(f"study run {name}: {exc}") from None


def plan(study: Study) -> list[PlannedRun]:
    """Every run of the study, in order, with its config built and validated.

    Centralized baselines come last: one per combination of the grid's non-federated fields.
    """
    fields = list(study.grid)
    runs: list[PlannedRun] = []
    for values in itertools.product(*study.grid.values()):
        varied = dict(zip(fields, values, strict=True))
        name = _slug(varied)
        runs.append(PlannedRun(name, varied, _config(study, name, varied, {})))
    if study.centralized is not None:
        kept = [f for f in fields if not _federated(f)]
        seen: set[tuple[Any, ...]] = set()
        for values in itertools.product(*(study.grid[f] for f in kept)):
            if values in seen:
                continue
            seen.add(values)
            varied = dict(zip(kept, values, strict=True))
            extra = {"centralized": True, **study.centralized}
            name = "centralized-" + _slug(varied) if varied else "centralized"
            cfg = _config(study, name, varied, extra)
            runs.append(PlannedRun(name, {**varied, "centralized": True}, cfg))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise FedpetError(
            "study: two runs would share a directory; vary fields with distinct values"
        )
    return runs
