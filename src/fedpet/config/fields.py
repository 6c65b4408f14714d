"""How a config field is declared once: its default, its help text and the values it allows.

:func:`option` puts the help text and a :class:`Rule` in the field's metadata; the parser
checks every value against its rule, and the CLI's help and the reference page
(``docs/reference/config.md``) are written from the same metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """The values a field allows: a test, and the words that say what passes it."""

    ok: Callable[[Any], bool]
    allowed: str


def option(default: Any, help: str, rule: Rule | None = None) -> Any:
    """A config field: its default, its help text, and the rule its values obey."""
    metadata = {"help": help, "rule": rule}
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults are immutable: use a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type[Any], name: str) -> str:
    """The help text of field ``name`` of a config dataclass."""
    return str(_field(cls, name).metadata.get("help", ""))


def rule_of(cls: type[Any], name: str) -> Rule | None:
    """The rule of field ``name`` of a config dataclass, if it has one."""
    rule = _field(cls, name).metadata.get("rule")
    return rule if isinstance(rule, Rule) else None


def _field(cls: type[Any], name: str) -> dataclasses.Field[Any]:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def at_least(bound: float, what: str = "an integer") -> Rule:
    """``value >= bound``."""
    return Rule(lambda v: v >= bound, f"{what} >= {bound:g}")


def above(bound: float, what: str = "a number") -> Rule:
    """``value > bound``."""
    return Rule(lambda v: v > bound, f"{what} > {bound:g}")


def within(
    low: float, high: float, what: str, low_open: bool = False, high_open: bool = False
) -> Rule:
    """``value`` in the interval from ``low`` to ``high``; ``what`` names it in messages."""

    def ok(v: Any) -> bool:
        return bool(v > low if low_open else v >= low) and bool(
            v < high if high_open else v <= high
        )

    return Rule(ok, what)


def one_of(*choices: str) -> Rule:
    """One of a fixed set of words."""
    return Rule(lambda v: v in choices, "choose one of " + ", ".join(sorted(choices)))


def or_null(rule: Rule, null: str = "or null") -> Rule:
    """``rule``, or no value at all."""
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed}, {null}")


def each(rule: Rule) -> Rule:
    """Every item of a tuple obeys ``rule``."""
    return Rule(lambda v: all(rule.ok(x) for x in v), f"items each {rule.allowed}")
