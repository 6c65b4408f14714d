"""Building a config from YAML and dotted overrides: types, field rules, extensible sections.

A config is assembled in one direction only: defaults, then a YAML file, then
``--set section.field=value`` overrides (the CLI's flags are overrides too). Each value is
coerced to its field's type and checked against its field's rule. The ``method`` and
``algorithm`` sections take the options class their ``name`` picks, which a
:class:`Choices` supplies (the registries, above this package); rules that span fields or
sections are their owners' (``fedpet.configure``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, Union, get_args, get_origin, get_type_hints

import yaml

from fedpet.config.fields import rule_of
from fedpet.config.sections import AlgorithmOptions, Config, MethodOptions
from fedpet.errors import FedpetError

EXTENSIBLE: tuple[type[Any], ...] = (MethodOptions, AlgorithmOptions)
"""Sections whose class their ``name`` chooses."""


class Choices(Protocol):
    """The options classes an extensible section can take, by name."""

    def names(self, base: type[Any]) -> list[str]:
        """Every registered name of the kind ``base`` stands for (methods, algorithms)."""
        ...

    def options_class(self, base: type[Any], name: str) -> type[Any]:
        """The options class of ``name`` (a registered name)."""
        ...


class BaseOnly:
    """Choices with no registry: every name takes the base class's options."""

    def names(self, base: type[Any]) -> list[str]:
        """No list: any name is accepted."""
        return []

    def options_class(self, base: type[Any], name: str) -> type[Any]:
        """The base class itself."""
        return base


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), as written to ``config.yaml``."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's booleans: only true and false.

    YAML 1.1, PyYAML's default, also reads yes, no, on, off, y and n as booleans, so that
    ``data.options=[yes, no]`` would become ``[True, False]``; here they stay words.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read_yaml(text: str) -> Any:
    """The data a YAML text holds (safe: plain types only), with YAML 1.2's booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  # a safe loader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; unreadable or malformed files are a FedpetError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FedpetError(f"config: cannot read {str(path)!r}: {exc.__class__.__name__}") from None
    try:
        data = read_yaml(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise FedpetError(f"config: {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FedpetError(
            f"config: {str(path)!r} must hold a mapping of fields, not a list or scalar"
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``section.field=value``; the value is read as YAML (``8``, ``1e-3``, ``[a, b]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise FedpetError(f"--set {item!r}: expected KEY=VALUE, e.g. method.r=16")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def with_overrides(base: Mapping[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A nested copy of ``base`` with each dotted ``section.field`` override set in it."""
    tree: dict[str, Any] = _nested_copy(base)
    for key, value in overrides:
        _set_dotted(tree, key, value)
    return tree


def _nested_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _nested_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FedpetError(f"{key}: {part!r} is a field, not a section")
        node = child
    node[leaf] = value


def parse(tree: Mapping[str, Any], choices: Choices | None = None) -> Config:
    """The :class:`Config` a nested mapping describes; every field typed and rule-checked.

    The ``method`` and ``algorithm`` sections take the class ``choices`` gives their name.
    A field of another method's (or algorithm's) options is ignored, so that a study's base
    can set LoRA's rank for the runs that use LoRA; a field none of them has is an error.
    """
    cfg: Config = _from_mapping(Config, tree, "", choices or BaseOnly())
    return cfg


def _from_mapping(cls: type[Any], data: Mapping[str, Any], prefix: str, choices: Choices) -> Any:
    ignored: set[str] = set()
    if issubclass(cls, EXTENSIBLE):
        cls, ignored = _chosen(cls, data, prefix, choices)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names and key not in ignored:
            allowed = ", ".join(sorted(names))
            raise FedpetError(f"{prefix}{key}: unknown field; allowed here: {allowed}")
    kwargs: dict[str, Any] = {}
    for name in names:  # in the order the fields are declared
        hint, dotted = hints[name], f"{prefix}{name}"
        if name not in data:
            if isinstance(hint, type) and issubclass(hint, EXTENSIBLE):  # the chosen defaults
                kwargs[name] = _from_mapping(hint, {}, f"{dotted}.", choices)
            continue
        value = data[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise FedpetError(
                    f"{dotted}: is a section; give its fields, e.g. {dotted}.FIELD=..."
                )
            kwargs[name] = _from_mapping(hint, value, f"{dotted}.", choices)  # type: ignore[arg-type]
            continue
        kwargs[name] = _coerce(value, hint, dotted)
        rule = rule_of(cls, name)
        if rule is not None and not rule.ok(kwargs[name]):
            shown = list(kwargs[name]) if isinstance(kwargs[name], tuple) else kwargs[name]
            raise FedpetError(f"{dotted} = {shown!r} is not allowed: {rule.allowed}")
    return cls(**kwargs)


def _chosen(
    base: type[Any], data: Mapping[str, Any], prefix: str, choices: Choices
) -> tuple[type[Any], set[str]]:
    """The options class the section's ``name`` picks, and the fields it may ignore."""
    default = next(f.default for f in dataclasses.fields(base) if f.name == "name")
    name = _coerce(data.get("name", default), str, f"{prefix}name")
    known = choices.names(base)
    if known and name not in known:
        raise FedpetError(
            f"{prefix}name = {name!r} is not allowed: choose one of {', '.join(sorted(known))}"
        )
    chosen = choices.options_class(base, name)
    others = {f.name for n in known for f in dataclasses.fields(choices.options_class(base, n))}
    return chosen, others - {f.name for f in dataclasses.fields(chosen)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else str(value).split(",")
        item = get_args(hint)[0]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, key) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise FedpetError(f"{key} = {value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise FedpetError(f"{key} = {value!r}: expected an integer")
    if hint is float:
        number = math.nan
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
        if not math.isfinite(number):
            raise FedpetError(f"{key} = {value!r}: expected a finite number")
        return number
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise FedpetError(f"{key} = {value!r}: expected a string")
    raise TypeError(f"unsupported config type {hint!r} for {key}")
