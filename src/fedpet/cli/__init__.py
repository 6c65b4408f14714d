"""The ``fedpet`` command line: the parser, then one function per command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from fedpet.cli.parser import build_parser
from fedpet.errors import FedpetError, one_line


def _commands() -> dict[str, Callable[[Any], None]]:
    from fedpet.cli import attack, experiments, models

    return {
        "run": experiments.cmd_run,
        "partition": experiments.cmd_partition,
        "study": experiments.cmd_study,
        "report": experiments.cmd_report,
        "presets": experiments.cmd_presets,
        "attack": attack.cmd_attack,
        "export": models.cmd_export,
        "predict": models.cmd_predict,
        "evaluate": models.cmd_evaluate,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedpet`` command; returns the exit status."""
    if hasattr(sys.stdout, "reconfigure"):  # each line reaches a log file as it is printed
        sys.stdout.reconfigure(line_buffering=True)
    try:  # the flags' help reads the registries, and so any installed entry point
        parser = build_parser()
    except FedpetError as exc:
        print(one_line(f"fedpet: error: {exc}"), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        from fedpet.plugins import load_plugin

        for plugin in getattr(args, "plugin", []):
            load_plugin(plugin)
        _commands()[args.command](args)
    except FedpetError as exc:
        print(one_line(f"fedpet {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpet: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "main"]
