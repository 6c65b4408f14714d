"""Running a study: its runs one after another in this process, resumable at any point."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from fedpet.config import read_yaml, to_dict
from fedpet.errors import FedpetError
from fedpet.files import atomic_write, storage_errors
from fedpet.launch import resume_run, run_config, start_run
from fedpet.model import Backbones
from fedpet.privacy.report import write_leakage
from fedpet.progress import RunDisplay, Watcher, duration
from fedpet.rundir import finished_summary
from fedpet.study.curves import Entry
from fedpet.study.report import write_report
from fedpet.study.spec import PlannedRun, Study, parse_study, plan
from fedpet.tracking import flatten, make_tracker

STUDY_FILE = "study.yaml"


def claim(out: Path, study: Study) -> None:
    """Write ``study.yaml`` in ``out``, or check that the one there is this study."""
    text = yaml.safe_dump(study.to_dict(), sort_keys=False)
    saved = out / STUDY_FILE
    if saved.exists():
        if read_yaml(saved.read_text(encoding="utf-8")) != read_yaml(text):
            raise FedpetError(
                f"{out} holds a different study; give the same study to continue it, "
                "or another --out"
            )
        return
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(saved, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def entries(out: Path, runs: list[PlannedRun]) -> list[Entry]:
    """Each planned run with its directory under ``out/runs``."""
    return [(run, out / "runs" / run.name) for run in runs]


def run_study(
    study: Study,
    out: Path,
    tracker: str | None = None,
    experiment: str = "fedpet-study",
    quiet: bool = False,
) -> list[str]:
    """Run every planned run not finished yet; rewrite the report after each; its files.

    A finished run (its ``summary.json`` exists) is skipped; an interrupted one continues
    from its checkpoint; one stopped before its first checkpoint starts again. The
    pretrained backbone is loaded once and copied for each run that uses it. With a
    ``tracker``, each run's rounds are logged to it under ``experiment`` as they end.
    Each run's line gives the study's time left, from the runs this process has done.
    """
    runs = plan(study)
    claim(out, study)
    backbones = Backbones()
    planned = entries(out, runs)
    todo = sum(finished_summary(run_dir) is None for _, run_dir in planned)
    began, ran = time.perf_counter(), 0
    say = (lambda line: None) if quiet else print
    for i, (run, run_dir) in enumerate(planned, 1):
        head = f"[{i}/{len(runs)}] {run.name}"
        if finished_summary(run_dir) is not None:
            say(f"{head}: finished earlier, skipped")
            continue
        watchers: list[Watcher] = [RunDisplay(quiet=quiet)]
        started = time.perf_counter()
        if tracker:
            watchers.append(make_tracker(tracker, run_dir, experiment))
        if (run_dir / "checkpoint" / "state.json").exists():
            say(f"{head}: resuming")
            summary = resume_run(run_dir, backbones, watchers=watchers)
        else:
            say(f"{head}: starting")
            summary = start_run(
                run.config, run_dir, overwrite=True, backbones=backbones, watchers=watchers
            )
        ran += 1
        left = (time.perf_counter() - began) / ran * (todo - ran)
        eta = f", study ETA {duration(left)}" if todo > ran else ""
        sent = "bytes withheld under DP"
        if "bytes_up_total" in summary:
            sent = f"{(summary['bytes_up_total'] + summary['bytes_down_total']) / 1e6:,.1f} MB"
        took = time.perf_counter() - started
        test = f"test {summary['metric_name']} {summary['test_metric']:.4f}"
        say(f"{head}: {test}, {sent}, {took:.0f} s{eta}")
        write_report(out, planned)
    return write_report(out, planned)


def report(path: Path) -> list[str]:
    """Re-render the report of a study directory or of a run directory, and the leakage table.

    A run's report needs only its ``metrics.jsonl`` (a run still going, or stopped, has its
    convergence plot). The leakage table (``leakage.md``) gathers the ``fedpet attack``
    results under ``path``.
    """
    written = write_leakage(path)
    if (path / STUDY_FILE).exists():
        study = parse_study(read_yaml((path / STUDY_FILE).read_text()), str(path))
        return write_report(path, entries(path, plan(study))) + written
    if (path / "config.yaml").exists() and (path / "metrics.jsonl").exists():
        run = PlannedRun(path.name, {}, run_config(path))
        return write_report(path, [(run, path)]) + written
    if written:
        return written
    raise FedpetError(
        f"{path}: neither a study (no {STUDY_FILE}), a run with a finished round (no "
        "config.yaml and metrics.jsonl) nor a folder of attack results (no attack.json)"
    )


def compare(run_dirs: list[Path], out: Path) -> list[str]:
    """One report over several run directories (finished or not), written into ``out``.

    The runs are told apart by the config fields whose values differ among them, as a
    study's grid would; runs that differ only in their seed are averaged as seeds.
    """
    missing = [str(d) for d in run_dirs if not (d / "config.yaml").is_file()]
    if missing:
        raise FedpetError(f"{missing[0]!r} is not a run directory (no config.yaml)")
    configs = [run_config(d) for d in run_dirs]
    flat = [flatten(to_dict(cfg)) for cfg in configs]
    keys = [k for k in flat[0] if k not in IGNORED and len({repr(f.get(k)) for f in flat}) > 1]
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    runs = [
        (PlannedRun(name, {k: f.get(k) for k in keys}, cfg), d)
        for name, f, cfg, d in zip(names, flat, configs, run_dirs, strict=True)
    ]
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    return write_report(out, runs)


IGNORED = ("out", "filled", "device")  # fields that do not tell runs apart
