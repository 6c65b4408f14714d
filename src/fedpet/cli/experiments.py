"""The commands that train or plan: ``run``, ``study``, ``partition``, ``report``, ``presets``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpet.errors import FedpetError
from fedpet.reference import FLAGS

if TYPE_CHECKING:
    from fedpet.config import Config
    from fedpet.progress import Watcher

EXTENDS = ("federation.rounds", "train.epochs")  # what --resume may change


def overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The config fields the command line sets: ``--set`` items, then the flags given."""
    from fedpet.config import parse_override

    pairs = [(field, getattr(args, field, None)) for field in FLAGS.values()]
    flags = [(k, v) for k, v in pairs if v is not None]
    return [parse_override(item) for item in args.set] + flags


def config(args: argparse.Namespace) -> Config:
    """The run's resolved config from ``--config``, ``--set`` and the flags."""
    from fedpet.config import load_yaml
    from fedpet.configure import build_config, resolve, template

    base = template(load_yaml(args.config)) if args.config else {}
    return resolve(build_config(base, overrides(args)))


def cmd_partition(args: argparse.Namespace) -> None:
    """Partition the task as ``fedpet run`` would; print a summary, write the files."""
    from fedpet.algorithms import get_algorithm
    from fedpet.data.describe import describe_partition, plot_partition, summary_line
    from fedpet.experiment import load_data
    from fedpet.files import storage_errors
    from fedpet.rundir import RunDir, check_out_dir, default_run_dir

    cfg = config(args)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg, kind="partition")
    check_out_dir(out, args.overwrite)
    task, clients, tests = load_data(cfg)
    info = get_algorithm(cfg.algorithm).client_info
    report = describe_partition(task, clients, cfg, info, tests)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    RunDir(out).write_json("partition.json", report)
    with storage_errors(out):
        written = ["partition.json", *(p.name for p in plot_partition(report, out))]
    print(summary_line(report))
    print(f"wrote {', '.join(written)} in {out}")


def watchers(args: argparse.Namespace, out: Path, task: str) -> list[Watcher]:
    """The display (unless ``--quiet``) and the ``--tracker`` of one run."""
    from fedpet.progress import RunDisplay
    from fedpet.tracking import make_tracker

    shown: list[Watcher] = [RunDisplay(quiet=args.quiet)]
    if args.tracker:
        shown.append(make_tracker(args.tracker, out, f"fedpet-{task}"))
    return shown


def interrupted(out: Path, again: str) -> None:
    """Say on stderr what a Ctrl-C left in ``out`` and the command that continues."""
    from fedpet.rundir import checkpoint_round

    try:
        done = checkpoint_round(out)
    except FedpetError:
        print(f"fedpet: stopped before a round was checkpointed in {out}", file=sys.stderr)
        return
    print(f"fedpet: round {done} is checkpointed in {out}; continue with: {again}", file=sys.stderr)


def check_data(cfg: Config) -> str:
    """Load the data and the model's config as a run would; one line on what was found."""
    from fedpet.data.describe import describe_partition, summary_line
    from fedpet.experiment import load_data
    from fedpet.model import check_max_length, load_encoder_config, model_path

    task, clients, tests = load_data(cfg)
    _, model_config = load_encoder_config(cfg.model, cfg.train.dropout)
    from transformers import AutoTokenizer

    check_max_length(cfg, model_config, AutoTokenizer.from_pretrained(model_path(cfg.model)))
    sizes = f"{len(task.train):,} train / {len(task.validation):,} validation / "
    return (
        f"checked: {sizes}{len(task.test):,} test examples, labels {list(task.label_names)}; "
        f"{summary_line(describe_partition(task, clients, cfg, tests=tests))}; model {cfg.model!r} "
        f"({model_config.model_type})"
    )


def cmd_run(args: argparse.Namespace) -> None:
    """Validate, load once, run all rounds, write the run directory, print a summary."""
    import yaml

    from fedpet.config import to_dict
    from fedpet.launch import extend_run, resume_run, run_config, start_run
    from fedpet.progress import print_summary
    from fedpet.rundir import checkpoint_round, default_run_dir, finished_summary
    from fedpet.runtime.recorder import total_rounds
    from fedpet.tracking import check_tracker

    if args.tracker:
        check_tracker(args.tracker)
    if args.resume:
        out = Path(args.resume)
        given = overrides(args)
        extend = [value for field, value in given if field in EXTENDS]
        if args.config or args.overwrite or len(extend) < len(given) or len(extend) > 1:
            raise FedpetError(
                "--resume continues a run with its own config.yaml; give no other flags "
                "than --rounds N (or --epochs N, centralized) to extend it to N"
            )
        cfg = run_config(out)
        finished = finished_summary(out)
        if finished is not None and not extend:
            if not args.dry_run:
                print_summary(finished)
            print(f"{out}: the run has finished; nothing to resume, nothing was changed")
            return
        done = checkpoint_round(out)  # state.json alone: the tensors are read once, to resume
        if args.dry_run:
            planned = extend[0] if extend else total_rounds(cfg)
            print(f"{out}: would resume after round {done} of {planned}")
            return
        if extend:
            extend_run(out, int(extend[0]))
        again = f"fedpet run --resume {out}"
        try:
            summary = resume_run(out, watchers=watchers(args, out, cfg.data.task))
        except KeyboardInterrupt:
            interrupted(out, again)
            raise
    else:
        cfg = config(args)
        if args.dry_run:
            checked = check_data(cfg)
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            print(f"# {checked}")  # a comment: the output stays a config file
            return
        out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        try:
            summary = start_run(
                cfg, out, args.overwrite, watchers=watchers(args, out, cfg.data.task)
            )
        except KeyboardInterrupt:
            interrupted(out, f"fedpet run --resume {out}")
            raise
    print_summary(summary)
    print(f"run directory: {out}")


def study_spec(args: argparse.Namespace) -> Any:
    """The study the arguments name, with ``--set`` applied (``grid.FIELD`` sets an axis)."""
    import dataclasses

    from fedpet.config import parse_override, with_overrides
    from fedpet.study.spec import load_study

    if args.config and args.preset:
        raise FedpetError("give a study file (--config study.yaml) or --preset NAME, not both")
    if not (args.config or args.preset):
        raise FedpetError(
            "give the study to run: --preset NAME (fedpet presets lists them) or "
            "--config study.yaml"
        )
    study = load_study(args.config, args.preset)
    pairs = [parse_override(item) for item in args.set]
    grid = dict(study.grid)
    for key, value in pairs:
        if key.startswith("grid."):
            axis = key.removeprefix("grid.")
            values = value if isinstance(value, list) else [value]
            if not values:
                raise FedpetError(f"--set {key}=[] is not allowed: give at least one value")
            grid[axis] = values
    base = with_overrides(study.base, [(k, v) for k, v in pairs if not k.startswith("grid.")])
    return dataclasses.replace(study, base=base, grid=grid)


def cmd_study(args: argparse.Namespace) -> None:
    """Run (or continue) every run of a study, then write its report; or plan it."""
    from fedpet.study.runner import run_study
    from fedpet.tracking import check_tracker

    if args.tracker:
        check_tracker(args.tracker)
    study = study_spec(args)
    name = args.preset or Path(args.config).stem
    out = Path(args.out) if args.out else Path("studies") / name
    if args.dry_run:
        from fedpet.study.estimate import print_plan

        print_plan(study, out)
        return
    which = f"--preset {args.preset}" if args.preset else f"--config {args.config}"
    sets = "".join(f" --set {item}" for item in args.set)
    try:
        written = run_study(
            study, out, tracker=args.tracker, experiment=f"fedpet-study-{name}", quiet=args.quiet
        )
    except KeyboardInterrupt:
        print(
            f"fedpet: continue the study with: fedpet study {which}{sets} --out {out}",
            file=sys.stderr,
        )
        raise
    print(f"wrote {', '.join(written)} in {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """Render tables and plots from saved files (a study, runs, attacks); train nothing."""
    from fedpet.study.runner import compare, report

    dirs = [Path(d) for d in args.dirs]
    if len(dirs) == 1 and args.out is None:
        print(f"wrote {', '.join(report(dirs[0]))} in {dirs[0]}")
        return
    out = Path(args.out or "report")
    print(f"wrote {', '.join(compare(dirs, out))} in {out}")


def cmd_presets(args: argparse.Namespace) -> None:
    """List the packaged studies; show one, or copy it to a file to edit."""
    from fedpet.study.spec import PRESETS, preset_text

    if args.name is None:
        if args.copy:
            raise FedpetError("--copy FILE copies one preset: fedpet presets NAME --copy FILE")
        for name in PRESETS:
            print(f"{name:18} {preset_text(name).splitlines()[0].removeprefix('# ')}")
        print("show one: fedpet presets NAME; copy it to edit: fedpet presets NAME --copy FILE")
        return
    text = preset_text(args.name)
    if args.copy is None:
        print(text, end="")
        return
    target = Path(args.copy)
    if target.exists():
        raise FedpetError(f"--copy {str(target)!r} exists; give a new file name")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FedpetError(f"--copy {str(target)!r}: cannot write ({exc.strerror})") from None
    print(f"wrote {target}; run it with fedpet study --config {target}")
