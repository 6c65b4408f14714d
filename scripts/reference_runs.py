"""Run the reference runs and save or compare their final global states.

A change to the round's code that should not change its arithmetic is checked by running
these before and after it::

    python scripts/reference_runs.py save /tmp/before    # on the code before the change
    python scripts/reference_runs.py compare /tmp/before # on the code after it

``compare`` prints, per run, whether the global state is bitwise equal and the largest
absolute difference, and exits with 1 if any run differs. The runs are scaled down (8
clients, 4 a round, 3 rounds, 480 examples) so that all of them take minutes on a laptop.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

SCALE = [
    "--clients", "8", "--clients-per-round", "4", "--rounds", "3",
    "--max-train-samples", "480", "--quiet",
]  # fmt: skip
RUNS = {
    "default": [],
    "flexlora-int8": [
        "--algorithm", "flexlora", "--set", "algorithm.ranks=[2,4,8]",
        "--codec-up", "int8", "--codec-down", "int8",
    ],
    "scaffold": [
        "--algorithm", "scaffold", "--optimizer", "sgd", "--set", "train.max_grad_norm=null",
    ],
    "dp-adaptive": [
        "--dp", "--dp-noise", "0.3", "--set", "privacy.target_quantile=0.5",
        "--set", "privacy.reproducible=true",
    ],
    "topk-feedback": ["--codec-up", "topk:0.2+int8"],
}  # fmt: skip


def run(name: str, out: Path) -> Path:
    """Run reference run ``name`` into ``out``; the path of its final global state."""
    argv = ["fedpet", "run", *SCALE, *RUNS[name], "--out", str(out), "--overwrite"]
    subprocess.run(argv, check=True)
    return out / "checkpoint" / "global.safetensors"


def main() -> int:
    """Save or compare the reference runs' global states."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["save", "compare"])
    parser.add_argument("folder", type=Path, help="where the saved states are (or go)")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    differs = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            state = load_file(str(run(name, Path(tmp) / name)))
            saved = args.folder / f"{name}.safetensors"
            if args.mode == "save":
                args.folder.mkdir(parents=True, exist_ok=True)
                saved.write_bytes(
                    (Path(tmp) / name / "checkpoint" / "global.safetensors").read_bytes()
                )
                print(f"{name}: saved {len(state)} tensors")
                continue
            before = load_file(str(saved))
            same = state.keys() == before.keys() and all(
                state[k].shape == before[k].shape and bool((state[k] == before[k]).all())
                for k in state
            )
            diff = max(
                (float((state[k] - before[k]).abs().max()) for k in state if k in before),
                default=float("nan"),
            )
            differs |= not same
            print(f"{name}: {'bitwise equal' if same else 'DIFFERS'} (max abs diff {diff:.3g})")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
