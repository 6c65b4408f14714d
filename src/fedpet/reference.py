"""Every config field as declared once, and what is written from the declarations.

The CLI's flags take their help text, type and default from the fields they set;
``docs/reference/config.md`` (every field of every section, method and algorithm) is
rendered from the same declarations, and the CLI reference from the parser built on them
(:mod:`fedpet.cli.pages` writes both).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from fedpet.algorithms import ALGORITHMS
from fedpet.config import AlgorithmOptions, Config, MethodOptions, help_of, rule_of
from fedpet.data.glue import GLUE
from fedpet.data.partition import PARTITIONERS
from fedpet.data.tasks import TASKS
from fedpet.methods import METHODS

FLAGS: dict[str, str] = {
    "--task": "data.task",
    "--objective": "data.objective",
    "--data-dir": "data.data_dir",
    "--model": "model",
    "--method": "method.name",
    "--clients": "federation.clients",
    "--clients-per-round": "federation.clients_per_round",
    "--rounds": "federation.rounds",
    "--local-epochs": "train.local_epochs",
    "--batch-size": "train.batch_size",
    "--lr": "train.lr",
    "--optimizer": "train.optimizer",
    "--max-length": "data.max_length",
    "--dropout": "train.dropout",
    "--partition": "data.partition",
    "--alpha": "data.alpha",
    "--max-train-samples": "data.max_train_samples",
    "--train-fraction": "data.train_fraction",
    "--seed": "seed",
    "--centralized": "centralized",
    "--epochs": "train.epochs",
    "--algorithm": "algorithm.name",
    "--max-update-norm": "federation.max_update_norm",
    "--min-clients-per-round": "federation.min_clients_per_round",
    "--round-deadline": "federation.round_deadline",
    "--client-failure-rate": "faults.client_failure_rate",
    "--straggler-rate": "faults.straggler_rate",
    "--runtime": "runtime",
    "--device": "device",
    "--precision": "train.precision",
    "--codec-up": "codec.up",
    "--codec-down": "codec.down",
    "--dp": "privacy.enabled",
    "--dp-noise": "privacy.noise_multiplier",
    "--dp-clip": "privacy.clip",
    "--dp-target-epsilon": "privacy.target_epsilon",
    "--secure-aggregation": "secagg.enabled",
    "--out": "out",
}
"""``fedpet run``'s flags and the config field each sets."""


@dataclass(frozen=True)
class FieldDoc:
    """One config field as declared: where it is, its type, default, rule and help."""

    dotted: str
    hint: Any
    default: Any
    allowed: str | None
    help: str
    owners: tuple[str, ...] = ()
    """The methods or algorithms whose options hold it (empty: every run has it)."""

    @property
    def kind(self) -> str:
        """The type in words: ``int``, ``float or null``, ``list of str``."""
        return _kind(self.hint)

    @property
    def shown_default(self) -> str:
        """The default as a user writes it in YAML."""
        return _yaml(self.default)


def _kind(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return f"{_kind(inner[0])} or null"
    if origin is tuple:
        return f"list of {_kind(get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def cell(text: str) -> str:
    """Text for a Markdown table cell (a bracket would start a link)."""
    return text.replace("|", "\\|").replace("[", "\\[")


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _fields(cls: type[Any], prefix: str, owners: tuple[str, ...] = ()) -> Iterator[FieldDoc]:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        rule = rule_of(cls, f.name)
        yield FieldDoc(
            f"{prefix}{f.name}",
            hints[f.name],
            f.default,
            rule.allowed if rule else None,
            help_of(cls, f.name),
            owners,
        )


def _sections() -> list[tuple[str, type[Any]]]:
    hints = get_type_hints(Config)
    return [
        (f.name, hints[f.name])
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def _own_options(section: str) -> list[tuple[type[Any], tuple[str, ...]]]:
    """Per options class of the registered methods (or algorithms), who declares it."""
    declared: list[tuple[type[Any], str]]
    if section == "method":
        declared = [(m.options, name) for name, m in METHODS.items()]
        base: type[Any] = MethodOptions
    else:
        declared = [(a.options, name) for name, a in ALGORITHMS.items()]
        base = AlgorithmOptions
    owners: dict[type[Any], list[str]] = {}
    for cls, name in declared:
        if cls is not base:
            owners.setdefault(cls, []).append(name)
    return [(cls, tuple(names)) for cls, names in owners.items()]


def field_docs() -> list[FieldDoc]:
    """Every field: the run's own, each section's, each method's and algorithm's options."""
    docs = list(_fields(Config, ""))
    for section, cls in _sections():
        docs += _fields(cls, f"{section}.")
        if section in ("method", "algorithm"):
            base = {f.name for f in dataclasses.fields(cls)}
            own: list[FieldDoc] = []
            for options, owners in _own_options(section):
                for d in _fields(options, f"{section}.", owners):
                    if d.dotted.split(".", 1)[1] not in base:
                        own = _declare(own, d)
            docs += own
    return docs


def _declare(docs: list[FieldDoc], doc: FieldDoc) -> list[FieldDoc]:
    """``docs`` with ``doc`` added.

    A field that several options classes inherit from a common one (the same help and
    default) is one declaration, with their owners joined.
    """
    for i, seen in enumerate(docs):
        if seen.dotted == doc.dotted and (seen.help, seen.default) == (doc.help, doc.default):
            joined = dataclasses.replace(seen, owners=seen.owners + doc.owners)
            return [*docs[:i], joined, *docs[i + 1 :]]
    return [*docs, doc]


def lookup(dotted: str) -> FieldDoc:
    """The declaration of ``dotted`` (the first options class that has it)."""
    return _index(_registered())[dotted]


def _registered() -> tuple[tuple[str, type[Any]], ...]:
    """What :func:`field_docs` reads beyond the config: the registered options classes."""
    methods = ((name, m.options) for name, m in METHODS.items())
    return (*methods, *((name, a.options) for name, a in ALGORITHMS.items()))


@functools.lru_cache(maxsize=4)
def _index(registered: tuple[tuple[str, type[Any]], ...]) -> dict[str, FieldDoc]:
    """:func:`field_docs` by dotted name, built once per set of registered extensions.

    The parser looks up each of its flags: rebuilding the list for each cost 0.43 s a command.
    """
    index: dict[str, FieldDoc] = {}
    for doc in field_docs():
        index.setdefault(doc.dotted, doc)
    return index


def choices(dotted: str) -> list[str]:
    """The registered names a field takes (methods, algorithms, partitions); else none."""
    registered: dict[str, list[str]] = {
        "data.task": [*TASKS, *GLUE, "file:PATH"],
        "method.name": list(METHODS),
        "algorithm.name": list(ALGORITHMS),
        "data.partition": list(PARTITIONERS),
    }
    return registered.get(dotted, [])


def flag_help(flag: str) -> str:
    """A flag's help: its field's help, the names it takes (unless it says them), the default."""
    doc = lookup(FLAGS[flag])
    names = choices(doc.dotted)
    if not names and doc.allowed and doc.allowed.startswith("choose one of "):
        names = doc.allowed.removeprefix("choose one of ").split(", ")
    said = all(name in doc.help for name in names)
    listed = f": {', '.join(names)}" if names and not said else ""
    return f"{doc.help}{listed} (default {doc.shown_default})"


def argparse_options(flag: str) -> dict[str, Any]:
    """How argparse reads a flag: as its field's type, or a switch for a true/false field."""
    doc = lookup(FLAGS[flag])
    hint = doc.hint
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        return {"action": "store_true", "help": flag_help(flag)}
    kind = hint if hint in (int, float) else None
    return {"type": kind, "help": flag_help(flag)} if kind else {"help": flag_help(flag)}


def render_reference() -> str:
    """``docs/reference/config.md``: every field, section by section."""
    lines = [
        "# Configuration reference",
        "",
        "Written by `python -m fedpet.cli.pages` from the fields' own declarations "
        "(`src/fedpet/config/`, and each method's and algorithm's options class); do not "
        "edit by hand. A field is set in a YAML file (`fedpet run --config`), with "
        "`--set section.field=value`, or with a flag of `fedpet run` where it has one "
        "(the [command-line reference](cli.md) lists them). Fields of another method's or "
        "algorithm's options are ignored by a run that does not use it.",
        "",
    ]
    docs = field_docs()
    groups: dict[str, list[FieldDoc]] = {}
    for d in docs:
        section = d.dotted.split(".", 1)[0] if "." in d.dotted else "run"
        groups.setdefault(section, []).append(d)
    flags = {field: flag for flag, field in FLAGS.items()}
    for section, rows in groups.items():
        lines += [f"## `{section}`" if section != "run" else "## The run", ""]
        lines += ["| field | type | default | allowed | what | flag |", "|---|---|---|---|---|---|"]
        for d in rows:
            owner = f" ({', '.join(d.owners)})" if d.owners else ""
            names = choices(d.dotted)
            allowed = d.allowed or (", ".join(names) if names else "")
            row = [
                f"`{d.dotted}`{owner}",
                d.kind,
                f"`{d.shown_default}`",
                cell(allowed),
                cell(d.help),
                f"`{flags[d.dotted]}`" if d.dotted in flags else "",
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


REPO = Path(__file__).resolve().parents[2]
