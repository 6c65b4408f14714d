"""The ``fedpet`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fedpet.errors import FedpetError, one_line
from fedpet.reference import FLAGS, argparse_options

if TYPE_CHECKING:
    from fedpet.config import Config


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, one_line(f"{self.prog}: error: {message}") + "\n")


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


def build_parser() -> argparse.ArgumentParser:
    """The ``fedpet`` argument parser."""
    parser = _Parser(prog="fedpet", description="Federated parameter-efficient tuning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one federated (or centralized) experiment")
    _add_config_flags(run, list(FLAGS))
    run.add_argument("--tracker", help="also log the run to mlflow or tensorboard")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config (or the run to resume) and print it; train nothing",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last complete round (its own config)",
    )
    study = sub.add_parser("study", help="run a grid of runs; write results.csv and report.md")
    study.add_argument("--config", help="study file: base config, grid, rules, centralized")
    study.add_argument(
        "--preset", help="a packaged study: quick, cpu, algorithms, privacy, fedpetuning-glue"
    )
    study.add_argument("--out", help="study directory (default studies/<preset or file name>)")
    study.add_argument("--tracker", help="also log each run to mlflow or tensorboard")
    study.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a field of the study's base config, e.g. --set data.data_dir=/data/glue",
    )
    report = sub.add_parser("report", help="re-render the report of a study, a run or attacks")
    report.add_argument("dir", help="a study or run directory, or a folder of attack results")
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
    part = sub.add_parser(
        "partition", help="partition a task across clients; write partition.json and plots"
    )
    _add_config_flags(part, PARTITION_FLAGS)
    for command in (run, study, attack, part):
        command.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE",
            help="import a module (name or .py path) that registers methods, algorithms or "
            "codecs, before anything else (repeatable)",
        )
    return parser


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from fedpet.config import parse_override

    pairs = [(field, getattr(args, field, None)) for field in FLAGS.values()]
    flags = [(k, v) for k, v in pairs if v is not None]
    return [parse_override(item) for item in args.set] + flags


def _config(args: argparse.Namespace) -> Config:
    from fedpet.config import load_yaml
    from fedpet.configure import build_config, resolve

    base = load_yaml(args.config) if args.config else {}
    return resolve(build_config(base, _overrides(args)))


def cmd_partition(args: argparse.Namespace) -> None:
    """Partition the task as ``fedpet run`` would; print a summary, write the files."""
    from fedpet.algorithms import get_algorithm
    from fedpet.data.describe import describe_partition, plot_partition, summary_line
    from fedpet.experiment import load_data
    from fedpet.rundir import RunDir, check_out_dir, default_run_dir, storage_errors

    cfg = _config(args)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg, kind="partition")
    check_out_dir(out, args.overwrite)
    task, clients = load_data(cfg)
    report = describe_partition(task, clients, cfg, get_algorithm(cfg.algorithm).client_info)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    RunDir(out).write_json("partition.json", report)
    with storage_errors(out):
        written = ["partition.json", *(p.name for p in plot_partition(report, out))]
    print(summary_line(report))
    print(f"wrote {', '.join(written)} in {out}")


def cmd_run(args: argparse.Namespace) -> None:
    """Validate, load once, run all rounds, write the run directory, print a summary."""
    import yaml

    from fedpet.config import to_dict
    from fedpet.launch import resume_run, run_config, start_run, total_rounds
    from fedpet.progress import print_summary
    from fedpet.rundir import default_run_dir, finished_summary, load_checkpoint
    from fedpet.tracking import check_tracker, log_run

    if args.tracker:
        check_tracker(args.tracker)
    if args.resume:
        if args.config or _overrides(args) or args.overwrite:
            raise FedpetError(
                "--resume continues a run with its own config.yaml; give no other flags"
            )
        out = Path(args.resume)
        finished = finished_summary(out)
        if finished is not None:
            if not args.dry_run:
                print_summary(finished)
            print(f"{out}: the run has finished; nothing to resume, nothing was changed")
            return
        if args.dry_run:
            cfg, done = run_config(out), load_checkpoint(out).round
            print(f"{out}: would resume after round {done} of {total_rounds(cfg)}")
            return
        summary = resume_run(out)
    else:
        cfg = _config(args)
        if args.dry_run:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return
        out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        summary = start_run(cfg, out, args.overwrite)
    print_summary(summary)
    print(f"run directory: {out}")
    if args.tracker:
        log_run(args.tracker, out, experiment=f"fedpet-{summary['task']}")


def cmd_study(args: argparse.Namespace) -> None:
    """Run (or continue) every run of a study, then write its report."""
    import dataclasses

    from fedpet.config import parse_override, with_overrides
    from fedpet.study.runner import run_study
    from fedpet.study.spec import load_study
    from fedpet.tracking import check_tracker

    if bool(args.config) == bool(args.preset):
        raise FedpetError("give a study file (--config study.yaml) or --preset NAME, not both")
    if args.tracker:
        check_tracker(args.tracker)
    study = load_study(args.config, args.preset)
    if args.set:
        base = with_overrides(study.base, [parse_override(item) for item in args.set])
        study = dataclasses.replace(study, base=base)
    name = args.preset or Path(args.config).stem
    out = Path(args.out) if args.out else Path("studies") / name
    written = run_study(study, out, tracker=args.tracker, experiment=f"fedpet-study-{name}")
    print(f"wrote {', '.join(written)} in {out}")


def cmd_attack(args: argparse.Namespace) -> None:
    """Attack the updates of the configured (or a run's) method; write attack.json."""
    from fedpet.attack.run import AttackSpec, attack
    from fedpet.config import load_yaml, to_dict
    from fedpet.configure import build_config, resolve
    from fedpet.launch import run_config
    from fedpet.privacy.report import ATTACK_FILE, write_leakage
    from fedpet.rundir import RunDir, check_out_dir, checkpoint_round, storage_errors

    run = Path(args.run) if args.run else None
    if run is not None and args.config:
        raise FedpetError("--run attacks a run with its own config.yaml; give no --config")
    if run is not None:
        base = to_dict(run_config(run))
    else:
        base = load_yaml(args.config) if args.config else {}
    # the update as it travels carries DP noise only when the clients add it
    wire = [("privacy.noise", "distributed"), ("privacy.sampling", "fixed")]
    cfg = resolve(build_config(base, wire + _overrides(args)))
    spec = AttackSpec(args.examples, args.batch, args.steps, args.attack_lr, args.max_tokens)
    spec.check()
    state = f"round{checkpoint_round(run)}" if run is not None else "init"
    default = Path("attacks") / f"{cfg.data.task}-{cfg.method.name}-{state}-{cfg.codec.up}"
    out = Path(args.out) if args.out else default
    check_out_dir(out, args.overwrite)
    result = attack(cfg, spec, run)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    RunDir(out).write_json(ATTACK_FILE, result)
    written = [ATTACK_FILE, *write_leakage(out)]
    print(
        f"{cfg.method.name} at {state}, codec {cfg.codec.up}, "
        f"DP {'on' if cfg.privacy.enabled else 'off'}: token F1 {result['f1']:.3f} "
        f"(precision {result['precision']:.3f}, recall {result['recall']:.3f}) over "
        f"{spec.examples} examples in batches of {spec.batch}, {result['seconds']:.0f} s"
    )
    print(f"wrote {', '.join(written)} in {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """Re-render tables and plots from a study's or a run's saved files; train nothing."""
    from fedpet.study.runner import report

    out = Path(args.dir)
    print(f"wrote {', '.join(report(out))} in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedpet`` command; returns the exit status."""
    try:  # the flags' help reads the registries, and so any installed entry point
        parser = build_parser()
    except FedpetError as exc:
        print(one_line(f"fedpet: error: {exc}"), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        commands = {
            "run": cmd_run,
            "partition": cmd_partition,
            "study": cmd_study,
            "report": cmd_report,
            "attack": cmd_attack,
        }
        from fedpet.plugins import load_plugin

        for plugin in getattr(args, "plugin", []):
            load_plugin(plugin)
        commands[args.command](args)
    except FedpetError as exc:
        print(one_line(f"fedpet {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
