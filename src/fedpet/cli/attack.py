"""``fedpet attack``: gradient inversion of one client's update, scored by token F1."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedpet.cli.experiments import overrides
from fedpet.errors import FedpetError


def cmd_attack(args: argparse.Namespace) -> None:
    """Attack the updates of the configured (or a run's) method; write attack.json."""
    from fedpet.attack.run import AttackSpec, attack
    from fedpet.config import load_yaml, to_dict
    from fedpet.configure import build_config, resolve, template
    from fedpet.files import storage_errors
    from fedpet.launch import run_config
    from fedpet.privacy.report import ATTACK_FILE, write_leakage
    from fedpet.rundir import RunDir, check_out_dir, checkpoint_round

    run = Path(args.run) if args.run else None
    if run is not None and args.config:
        raise FedpetError("--run attacks a run with its own config.yaml; give no --config")
    if run is not None:
        base = to_dict(run_config(run))
    else:
        base = template(load_yaml(args.config)) if args.config else {}
    # the update as it travels carries DP noise only when the clients add it
    wire = [("privacy.noise", "distributed"), ("privacy.sampling", "fixed")]
    cfg = resolve(build_config(base, wire + overrides(args)))
    spec = AttackSpec(args.examples, args.batch, args.steps, args.attack_lr, args.max_tokens)
    spec.check()
    state = f"round{checkpoint_round(run)}" if run is not None else "init"
    default = Path("attacks") / f"{cfg.data.task}-{cfg.method.name}-{state}-{cfg.codec.up}"
    out = Path(args.out) if args.out else default
    check_out_dir(out, args.overwrite)
    began = time.perf_counter()

    def report(done: int, total: int, f1: float) -> None:
        if not args.quiet:
            seconds = time.perf_counter() - began
            print(f"attack: update {done}/{total} · token F1 so far {f1:.3f} · {seconds:.0f} s")

    result = attack(cfg, spec, run, report)
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
