"""A study file: a base config, a grid over any config fields, rules, centralized baselines.

```yaml
base:                      # any run config (the sections of config.yaml)
  federation: {clients: 10, clients_per_round: 5, rounds: 8}
grid:                      # dotted field -> values; every combination is one run
  method.name: [full, lora]
  partition:               # a linked axis: each value sets several fields together,
    - {data.partition: iid}  # named by its fields' values, or by its name:
    - {data.alpha: 0.1}
  seed: [0, 1]
rules:                     # settings for the runs whose fields match ``when``
  - when: {method.name: full}
    set: {train.lr: 5.0e-5}
  - when: {method.name: full, algorithm.name: fedsa-lora}
    skip: true               # or no such run at all (a combination that does not apply)
centralized:               # optional: one centralized run per combination of the grid's
  train.epochs: 2          # non-federated fields, with these settings
```
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedpet.config import Config, load_yaml, read_yaml
from fedpet.configure import build_config, resolve
from fedpet.errors import FedpetError

PRESETS = (
    "quick",
    "cpu",
    "algorithms",
    "privacy",
    "fedpetuning-glue",
    "paper-heterogeneity",
    "paper-scale",
    "paper-scenarios",
    "paper-personalization",
    "paper-lora-aggregation",
    "flowertune",
)
# fields that only mean something in a federation: a centralized baseline ignores them
FEDERATED_FIELDS = ("data.alpha", "data.partition", "federation.", "algorithm.", "codec.")
FEDERATED_ONLY = ("train.local_epochs", "faults.")
SHORT_NAMES = {
    "method.name": "method",
    "data.task": "task",
    "data.partition": "partition",
    "algorithm.name": "algorithm",
}


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
    skip: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The study as written to ``study.yaml`` in its directory."""
        rules: list[dict[str, Any]] = [{"when": w, "set": s} for w, s in self.rules]
        rules += [{"when": w, "skip": True} for w in self.skip]
        return {
            "base": self.base,
            "grid": self.grid,
            "rules": rules,
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
        return parse_study(read_yaml(preset_text(preset)), f"preset {preset}")
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
    for axis, values in grid.items():
        _check_linked(where, str(axis), values)
    rules, skip = [], []
    for rule in data.get("rules") or []:
        skips = isinstance(rule, Mapping) and set(rule) == {"when", "skip"} and rule["skip"] is True
        if not ((isinstance(rule, Mapping) and set(rule) == {"when", "set"}) or skips):
            raise FedpetError(
                f"{where}: each rule is {{when: {{field: value}}, set: {{field: value}}}} or "
                "{when: {field: value}, skip: true}"
            )
        settings = {} if skips else rule["set"]
        if not isinstance(rule["when"], Mapping) or not isinstance(settings, Mapping):
            raise FedpetError(f"{where}: a rule's when and set map dotted fields to values")
        if skips:
            skip.append(dict(rule["when"]))
        else:
            rules.append((dict(rule["when"]), dict(settings)))
    centralized = data.get("centralized")
    if centralized is not None and not isinstance(centralized, Mapping):
        raise FedpetError(f"{where}: centralized must be a mapping of settings ({{}} for none)")
    return Study(
        dict(base),
        {str(k): list(v) for k, v in grid.items()},
        rules,
        None if centralized is None else dict(centralized),
        skip,
    )


def _check_linked(where: str, axis: str, values: list[Any]) -> None:
    """A linked axis (values that are mappings) sets dotted fields; named values all or none."""
    linked = [isinstance(v, Mapping) for v in values]
    if not any(linked):
        return
    if not all(linked):
        raise FedpetError(
            f"{where}: grid axis {axis!r} mixes mappings and plain values; a linked axis's "
            "values are all mappings of dotted fields ({data.partition: iid})"
        )
    named = ["name" in v for v in values]
    for value in values:
        fields = [k for k in value if k != "name"]
        if not fields or not all(isinstance(k, str) for k in fields):
            raise FedpetError(
                f"{where}: grid axis {axis!r}: each value maps dotted fields to values"
            )
    if any(named) and not all(named):
        raise FedpetError(f"{where}: grid axis {axis!r}: give every value a name, or none")
    if all(named) and len({str(v["name"]) for v in values}) != len(values):
        raise FedpetError(f"{where}: grid axis {axis!r}: two values share a name")


def _expand(axis: str, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One grid value as (what the run is named and tabled by, further settings).

    A plain value is its field's; a linked one's fields are shown, or hidden behind its
    ``name`` (which the axis's column then holds).
    """
    if not isinstance(value, Mapping):
        return {axis: value}, {}
    fields = {str(k): v for k, v in value.items() if k != "name"}
    if "name" in value:
        return {axis: value["name"]}, fields
    return fields, {}


def _federated(field: str) -> bool:
    return field.startswith(FEDERATED_FIELDS) or field.startswith(FEDERATED_ONLY)


def _centralized_part(axis: str, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a grid value leaves for a centralized baseline: its non-federated fields."""
    varied, extra = _expand(axis, value)
    extra = {k: v for k, v in extra.items() if not _federated(k)}
    if isinstance(value, Mapping) and "name" in value:
        return (varied, extra) if extra else ({}, {})
    return {k: v for k, v in varied.items() if not _federated(k)}, extra


def _slug(varied: Mapping[str, Any], labels: set[str]) -> str:
    """A folder name a shell handles as it is: ``lora-alpha0.1-seed0`` (no = , or spaces).

    The method, task, partition, algorithm and a named value (``labels``: the axes that
    hold names) are named by their value; other fields by their last part and value.
    """
    parts = [
        str(v) if k in SHORT_NAMES or k in labels else f"{k.rsplit('.', 1)[-1]}{v}"
        for k, v in varied.items()
    ]
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts)).strip("_") or "run"


def _matches(when: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in when.items())


def _named_axes(study: Study) -> set[str]:
    """The linked axes whose values carry a name: a label, not a config field."""
    return {
        axis
        for axis, values in study.grid.items()
        if isinstance(values[0], Mapping) and "name" in values[0]
    }


def _config(study: Study, name: str, varied: dict[str, Any], extra: Mapping[str, Any]) -> Config:
    labels = _named_axes(study)
    overrides = [*((k, v) for k, v in varied.items() if k not in labels), *extra.items()]
    flat = {**varied, **extra}  # rules may match a named value too
    for when, settings in study.rules:
        if _matches(when, flat):
            overrides.extend(settings.items())
    try:
        return resolve(build_config(study.base, overrides))
    except FedpetError as exc:
        raise FedpetError(f"study run {name}: {exc}") from None


def _combine(
    parts: Iterable[tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    varied: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for shown, hidden in parts:
        varied.update(shown)
        extra.update(hidden)
    return varied, extra


def plan(study: Study) -> list[PlannedRun]:
    """Every run of the study, in order, with its config built and validated.

    Centralized baselines come last: one per combination of the grid's non-federated fields.
    """
    axes, labels = list(study.grid), _named_axes(study)
    combinations = list(itertools.product(*study.grid.values()))
    runs: list[PlannedRun] = []
    for values in combinations:
        varied, extra = _combine(_expand(a, v) for a, v in zip(axes, values, strict=True))
        if any(_matches(when, {**varied, **extra}) for when in study.skip):
            continue
        name = _slug(varied, labels)
        runs.append(PlannedRun(name, varied, _config(study, name, varied, extra)))
    if study.centralized is not None:
        seen: set[str] = set()
        for values in combinations:
            parts = (_centralized_part(a, v) for a, v in zip(axes, values, strict=True))
            varied, extra = _combine(parts)
            skipped = any(_matches(when, {**varied, **extra}) for when in study.skip)
            if skipped or repr((varied, extra)) in seen:
                continue
            seen.add(repr((varied, extra)))
            extra = {**extra, "centralized": True, **study.centralized}
            name = "centralized-" + _slug(varied, labels) if varied else "centralized"
            cfg = _config(study, name, varied, extra)
            runs.append(PlannedRun(name, {**varied, "centralized": True}, cfg))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise FedpetError(
            "study: two runs would share a directory; vary fields with distinct values"
        )
    return runs
