"""Running a study: its runs one after another in this process, resumable at any point."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedpet.errors import FedpetError
from fedpet.launch import resume_run, run_config, start_run
from fedpet.model import Backbones
from fedpet.privacy.report import write_leakage
from fedpet.rundir import atomic_write, finished_summary, storage_errors
from fedpet.study.report import Entry, write_report
from fedpet.study.spec import PlannedRun, Study, parse_study, plan
from fedpet.tracking import log_run

STUDY_FILE = "study.yaml"


def claim(out: Path, study: Study) -> None:
    """Write ``study.yaml`` in ``out``, or check that the one there is this study."""
    text = yaml.safe_dump(study.to_dict(), sort_keys=False)
    saved = out / STUDY_FILE
    if saved.exists():
        if yaml.safe_load(saved.read_text(encoding="utf-8")) != yaml.safe_load(text):
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
    study: Study, out: Path, tracker: str | None = None, experiment: str = "fedpet-study"
) -> list[str]:
    """Run every planned run not finished yet; rewrite the report after each; its files.

    A finished run (its ``summary.json`` exists) is skipped; an interrupted one continues
    from its checkpoint; one stopped before its first checkpoint starts again. The
    pretrained backbone is loaded once and copied for each run that uses it. With a
    ``tracker``, each run is logged to it under ``experiment`` when it finishes.
    """
    runs = plan(study)
    claim(out, study)
    backbones = Backbones()
    planned = entries(out, runs)
    for i, (run, run_dir) in enumerate(planned, 1):
        head = f"[{i}/{len(runs)}] {run.name}"
        if finished_summary(run_dir) is not None:
            print(f"{head}: finished earlier, skipped")
            continue
        if (run_dir / "checkpoint" / "state.json").exists():
            print(f"{head}: resuming")
            summary = resume_run(run_dir, backbones)
        else:
            print(f"{head}: starting")
            summary = start_run(run.config, run_dir, overwrite=True, backbones=backbones)
        mb = (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6
        print(
            f"{head}: test {summary['metric_name']} {summary['test_metric']:.4f}, "
            f"{mb:,.1f} MB, {summary['wall_seconds']:.0f} s"
        )
        if tracker:
            log_run(tracker, run_dir, experiment)
        write_report(out, planned)
    return write_report(out, planned)


def report(path: Path) -> list[str]:
    """Re-render the report of a study directory or of a run directory, and the leakage table.

    The leakage table (``leakage.md``) gathers the ``fedpet attack`` results under ``path``.
    """
    written = write_leakage(path)
    if (path / STUDY_FILE).exists():
        study = parse_study(yaml.safe_load((path / STUDY_FILE).read_text()), str(path))
        return write_report(path, entries(path, plan(study))) + written
    if (path / "summary.json").exists():
        run = PlannedRun(path.name, {}, run_config(path))
        return write_report(path, [(run, path)]) + written
    if written:
        return written
    raise FedpetError(
        f"{path}: neither a study (no {STUDY_FILE}), a finished run (no summary.json) "
        "nor a folder of attack results (no attack.json)"
    )
