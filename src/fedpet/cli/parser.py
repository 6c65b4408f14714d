"""The ``fedpet`` argument parser: every command and flag, the config flags from the fields."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn, TypeAlias

import fedpet
from fedpet.errors import one_line
from fedpet.reference import FLAGS, argparse_options


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, one_line(f"{self.prog}: error: {message}") + "\n")


Subparsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


PARTITION_FLAGS = (
    "--task",
    "--data-dir",
    "--clients",
    "--partition",
    "--alpha",
    "--max-train-samples",
    "--train-fraction",
    "--seed",
    "--out",
)


ATTACK_FLAGS = (
    "--task",
    "--data-dir",
    "--model",
    "--method",
    "--max-train-samples",
    "--clients-per-round",
    "--codec-up",
    "--dp",
    "--dp-noise",
    "--dp-clip",
    "--seed",
    "--out",
)


def _add_config_flags(parser: argparse.ArgumentParser, flags: Sequence[str]) -> None:
    """The flags that set config fields, each with its field's help, type and default."""
    parser.add_argument("--config", help="YAML config file (e.g. a run's config.yaml)")
    for flag in flags:
        parser.add_argument(flag, dest=FLAGS[flag], default=None, **argparse_options(flag))
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run or partition in --out"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set method.r=16 (repeatable)",
    )


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", action="store_true", help="print only errors and the final result"
    )


def _add_run(sub: Subparsers) -> None:
    from fedpet.tracking import TRACKERS

    run = sub.add_parser("run", help="run one federated (or centralized) experiment")
    _add_config_flags(run, list(FLAGS))
    run.add_argument(
        "--tracker",
        help=f"also log each round as it ends: {', '.join(TRACKERS)} (Weights & Biases)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and the data (or the run to resume) and print the config; "
        "train nothing",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last complete round (its own config); with "
        "--rounds N (--epochs N when centralized), extend it to N",
    )
    _add_quiet(run)


def _add_study(sub: Subparsers) -> None:
    from fedpet.study.spec import PRESETS
    from fedpet.tracking import TRACKERS

    study = sub.add_parser("study", help="run a grid of runs; write results.csv and report.md")
    study.add_argument("--config", help="study file: base config, grid, rules, centralized")
    study.add_argument(
        "--preset", help=f"a packaged study: {', '.join(PRESETS)} (fedpet presets shows them)"
    )
    study.add_argument("--out", help="study directory (default studies/<preset or file name>)")
    study.add_argument(
        "--tracker", help=f"also log each run's rounds as they end: {', '.join(TRACKERS)}"
    )
    study.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a field of the study's base config (--set data.data_dir=/data/glue), or "
        "replace a grid axis (--set grid.seed=[0])",
    )
    study.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and estimate their time from a short measured step; train nothing",
    )
    _add_quiet(study)


def _add_models(sub: Subparsers) -> None:
    from fedpet.export.loading import ROUNDS

    export = sub.add_parser(
        "export", help="write a run's model as a peft / adapters / transformers model"
    )
    export.add_argument("run", metavar="RUN_DIR", help="the run directory")
    export.add_argument("--out", required=True, help="the export directory")
    export.add_argument(
        "--round", choices=ROUNDS, default="best", help="the best validated round's or the last"
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    predict = sub.add_parser("predict", help="label texts with a run's or an export's model")
    predict.add_argument(
        "model", metavar="RUN_DIR|EXPORT_DIR", help="a run directory or a fedpet export"
    )
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="a text to label (repeatable)")
    given.add_argument("--file", help="texts: .txt (one per line), .csv, .tsv, .jsonl, .parquet")
    predict.add_argument("--text-column", default="text", help="the file's text column (text)")
    predict.add_argument("--pair-column", help="the file's second text column (sentence pairs)")
    predict.add_argument("--out", help="write the predictions here (.csv, .tsv or .jsonl)")
    predict.add_argument("--round", choices=ROUNDS, default="best", help="of a run: best or last")
    evaluate = sub.add_parser("evaluate", help="score a run's or an export's model")
    evaluate.add_argument(
        "model", metavar="RUN_DIR|EXPORT_DIR", help="a run directory or a fedpet export"
    )
    where = evaluate.add_mutually_exclusive_group()
    where.add_argument("--task", help="a task name or file:PATH (default: the model's own task)")
    where.add_argument("--file", help="a labelled file: score every row")
    evaluate.add_argument(
        "--split", default="test", help="the task's split: train, validation or test (test)"
    )
    evaluate.add_argument("--text-column", help="the file's text column (the model's task's)")
    evaluate.add_argument("--label-column", help="the file's label column (the task's)")
    evaluate.add_argument("--round", choices=ROUNDS, default="best", help="of a run: best or last")


def _add_attack(sub: Subparsers) -> None:
    attack = sub.add_parser(
        "attack",
        help="invert one client's update (gradient inversion); token precision/recall/F1",
    )
    _add_config_flags(attack, ATTACK_FLAGS)
    attack.add_argument(
        "--run", help="start from this run's last global state (default: initialisation)"
    )
    attack.add_argument("--examples", type=int, default=20, help="examples attacked (20)")
    attack.add_argument("--batch", type=int, default=1, help="examples per update (1)")
    attack.add_argument("--steps", type=int, default=300, help="gradient-matching steps (300)")
    attack.add_argument(
        "--attack-lr", type=float, default=0.01, help="gradient matching's Adam lr (0.01)"
    )
    attack.add_argument(
        "--max-tokens", type=int, default=32, help="attack examples of at most N tokens (32)"
    )
    _add_quiet(attack)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedpet`` argument parser."""
    parser = _Parser(prog="fedpet", description="Federated parameter-efficient tuning.")
    parser.add_argument("--version", action="version", version=f"fedpet {fedpet.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_study(sub)
    report = sub.add_parser("report", help="render the report of runs, a study or attacks")
    report.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a study directory, a folder of attack results, or run directories (finished or "
        "not) to compare",
    )
    report.add_argument("--out", help="where a comparison of several runs goes (report/)")
    _add_attack(sub)
    part = sub.add_parser(
        "partition", help="partition a task across clients; write partition.json and plots"
    )
    _add_config_flags(part, PARTITION_FLAGS)
    _add_models(sub)
    presets = sub.add_parser("presets", help="list the packaged studies, show or copy one")
    presets.add_argument("name", nargs="?", help="a preset to show")
    presets.add_argument("--copy", metavar="FILE", help="write the preset to FILE to edit")
    for name in ("run", "study", "attack", "partition", "export", "predict", "evaluate"):
        sub.choices[name].add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE",
            help="import a module (name or .py path) that registers methods, algorithms or "
            "codecs, before anything else (repeatable)",
        )
    return parser
