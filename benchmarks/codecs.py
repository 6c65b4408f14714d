"""How few bytes LoRA can send before accuracy drops: upload/download codecs side by side.

LoRA on rotten_tomatoes at alpha 1 (ten clients, five per round) with fp32, fp16, int8
(a scale per tensor), top-k 10% + int8 and top-k 1% + int8 uploads (error feedback on for
top-k; downloads in the same precision, int8 for top-k), and one round of full
fine-tuning in fp32 for the bytes it sends. Prints test accuracy, MB up and down, and
LoRA's bytes per client upload as a share of full fine-tuning's. Resumable, like a study.
Usage: python benchmarks/codecs.py [--out studies/codecs] [--train-samples 400]
       [--eval-samples 200] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedpet.study.runner import run_study
from fedpet.study.spec import Study, plan

PAIRS = {  # upload codec -> download codec
    "fp32": "fp32",
    "fp16": "fp16",
    "int8": "int8",
    "topk:0.1+int8": "int8",
    "topk:0.01+int8": "int8",
}


def studies(args: argparse.Namespace) -> dict[str, Study]:
    """The LoRA codec grid, and one round of full fine-tuning in fp32."""
    base = {
        "method": {"name": "lora"},
        "data": {
            "task": "rotten_tomatoes",
            "alpha": 1.0,
            "max_train_samples": args.train_samples,
            "max_eval_samples": args.eval_samples,
        },
        "federation": {"clients": 10, "clients_per_round": 5, "rounds": args.rounds},
    }
    rules = [({"codec.up": up}, {"codec.down": down}) for up, down in PAIRS.items()]
    lora = Study(base, {"codec.up": list(PAIRS)}, rules, None)
    full = {**base, "method": {"name": "full"}, "federation": {**base["federation"], "rounds": 1}}
    return {"lora": lora, "full": Study(full, {"seed": [0]}, [], None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("studies/codecs"))
    parser.add_argument("--train-samples", type=int, default=400)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    summaries = {}
    for key, study in studies(args).items():
        run_study(study, args.out / key)
        for run in plan(study):
            path = args.out / key / "runs" / run.name / "summary.json"
            summaries[(key, run.config.codec.up)] = json.loads(path.read_text())
    full = summaries[("full", "fp32")]
    full_upload = full["bytes_up_total"] / (full["rounds_completed"] * 5)
    print(f"\n{'LoRA upload codec':<18} {'download':>9} {'test acc':>9} {'MB up':>9} "
          f"{'MB down':>9} {'B/upload':>10} {'% of FedFT':>10}")  # fmt: skip
    for up, down in PAIRS.items():
        s = summaries[("lora", up)]
        upload = s["bytes_up_total"] / (s["rounds_completed"] * 5)
        share = 100 * upload / full_upload
        print(
            f"{up:<18} {down:>9} {s['test_accuracy']:>9.4f} {s['bytes_up_total'] / 1e6:>9.3f} "
            f"{s['bytes_down_total'] / 1e6:>9.3f} {upload:>10,.0f} {share:>9.4f}%"
        )
    print(f"full fine-tuning, fp32: {full_upload:,.0f} bytes per client upload")


if __name__ == "__main__":
    main()
