"""The documentation pages written from the code: the CLI and the configuration reference.

``docs/reference/cli.md`` is rendered from the argument parser itself (every command, its
usage and options, the config field each ``fedpet run`` flag sets) and
``docs/reference/config.md`` from the config fields' declarations
(:func:`fedpet.reference.render_reference`); the README's and the home page's results
table from the committed heterogeneity study (``docs/results/heterogeneity/results.csv``).
``python -m fedpet.cli.pages`` rewrites them; a test and the documentation build
(``scripts/docs_hooks.py``) fail when one is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedpet.cli.parser import build_parser
from fedpet.reference import FLAGS, REPO, cell, flag_help, render_reference
from fedpet.study.results import mean_std

PAGES = ("docs/reference/cli.md", "docs/reference/config.md")
SUMMARIZED = ("README.md", "docs/index.md")  # hold the results table between the markers
RESULTS = "docs/results/heterogeneity/results.csv"
BEGIN, END = "<!-- results: begin (python -m fedpet.cli.pages) -->", "<!-- results: end -->"
SETTINGS = ("iid", "alpha=10", "alpha=1", "alpha=0.1", "centralized")
INTRO = """\
# Command-line reference

Written by `python -m fedpet.cli.pages` from the argument parser and the config fields'
declarations; do not edit by hand. Each flag of `fedpet run` that sets a config field takes
its help text, type and default from that field (its column below); every field, with or
without a flag, is in the [configuration reference](config.md), and how flags, `--set` and a
config file combine is in [Configuring a run](../guides/configuring.md).
"""


def _cell(text: str) -> str:
    """Text for a Markdown table cell, on one line."""
    return cell(" ".join(text.split()))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    flag = action.option_strings[-1]
    takes = action.nargs != 0 and not isinstance(
        action, argparse._StoreTrueAction | argparse._VersionAction
    )
    return f"{flag} {action.metavar or action.dest.rsplit('.', 1)[-1].upper()}" if takes else flag


def render_command(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    """One command's section: what it does, its usage, and a table of its arguments."""
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f"## `fedpet {name}`", "", summary[0].upper() + summary[1:] + ".", ""]
    lines += ["```text", usage, "```", ""]

    def sets_field(a: argparse.Action) -> bool:
        return bool(a.option_strings) and FLAGS.get(a.option_strings[-1]) == a.dest

    field_rows = [a for a in _options(parser) if sets_field(a)]
    other = [a for a in _options(parser) if not sets_field(a)]
    if field_rows:
        lines += ["| flag | config field | what (default) |", "|---|---|---|"]
        for a in field_rows:
            flag = a.option_strings[-1]
            lines.append(f"| `{flag}` | `{a.dest}` | {_cell(flag_help(flag))} |")
        lines.append("")
    if other:
        lines += ["| argument | what |", "|---|---|"]
        lines += [f"| `{_cell(_name(a))}` | {_cell(a.help or '')} |" for a in other]
        lines.append("")
    return lines


def render_cli() -> str:
    """``docs/reference/cli.md``: every command of ``fedpet``."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    lines = [INTRO]
    for name, command in sub.choices.items():
        lines += render_command(name, command, helps[name])
    return "\n".join(lines).rstrip() + "\n"


def render_results(results: pd.DataFrame) -> str:
    """The results table: per method, test metric per setting, and MB per federated run."""
    table = mean_std(results)
    done = results[results["status"] == "done"]
    federated = done[done["setting"] != "centralized"]
    mb = federated.groupby("method", sort=False)["mb_total"].mean()
    settings = [x for x in SETTINGS if x in set(table["setting"])]
    lines = [
        "| method | " + " | ".join(settings) + " | MB per run | % of FedFT's MB |",
        "|---" * (len(settings) + 3) + "|",
    ]
    for method in dict.fromkeys(done["method"]):
        cells = []
        for setting in settings:
            row = table[(table["method"] == method) & (table["setting"] == setting)]
            cells.append(
                "-"
                if row.empty
                else f"{100 * row['mean'].iloc[0]:.1f} ± {100 * row['std'].iloc[0]:.1f}"
            )
        share = f"{100 * mb[method] / mb['full']:.2f}%" if "full" in mb else "-"
        cells += [f"{mb[method]:,.1f}", share]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_results(text: str, table: str) -> str:
    """``text`` with ``table`` between the results markers."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def rendered(root: Path = REPO) -> dict[str, str]:
    """Each generated page's path under ``root`` and the text the code renders now."""
    pages = dict(zip(PAGES, (render_cli(), render_reference()), strict=True))
    csv = root / RESULTS
    table = render_results(pd.read_csv(csv)) if csv.exists() else "(no results yet)"
    for path in SUMMARIZED:
        pages[path] = with_results((root / path).read_text(encoding="utf-8"), table)
    return pages


def stale(root: Path = REPO) -> list[str]:
    """The generated pages under ``root`` that differ from what the code renders now."""
    return [
        path
        for path, text in rendered(root).items()
        if not (root / path).exists() or (root / path).read_text(encoding="utf-8") != text
    ]


def main(root: Path = REPO) -> int:
    """Rewrite the generated pages under ``root``."""
    for path, text in rendered(root).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
