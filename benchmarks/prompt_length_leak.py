"""How much a generative task's prompt length tells of its label: a check of the truncation.

A classification task asked as text is scored by the option of highest log-likelihood after
the prompt. If the prompt were cut to leave room for the gold answer only, its length (and
where the answer starts) would differ by label, and a model could read the label from it.
This script tokenizes a task's training and test splits as a run does, learns on the
training split the most frequent label of each prompt length, and prints the accuracy of
that guess on the test split beside the test split's majority class. Without a leak the
guess scores about the majority rate.

Usage: python benchmarks/prompt_length_leak.py MODEL [--task bbc_news] [--max-length 96]
(MODEL: a decoder's directory or hub id with its tokenizer, e.g. the output of
scripts/pretrain_decoder.py)
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedpet.configure import build_config
from fedpet.data.tasks import load_task
from fedpet.generative.prompts import encode_generative
from fedpet.model import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default="bbc_news")
    parser.add_argument("--max-length", type=int, default=96)
    args = parser.parse_args()
    cfg = build_config(
        {
            "model": args.model,
            "data": {"task": args.task, "objective": "generate", "max_length": args.max_length},
        }
    )
    task = load_task(cfg.data)
    tokenizer = load_tokenizer(args.model)
    train, test = (
        encode_generative(tokenizer, split, args.max_length, task.options)
        for split in (task.train, task.test)
    )
    assert train.prompt_lengths is not None and test.prompt_lengths is not None
    by_length: dict[int, Counter[int]] = {}
    for n, label in zip(train.prompt_lengths.tolist(), train.labels.tolist(), strict=True):
        by_length.setdefault(n, Counter())[label] += 1
    overall = int(np.bincount(train.labels).argmax())
    guess = np.array(
        [
            by_length[n].most_common(1)[0][0] if n in by_length else overall
            for n in test.prompt_lengths.tolist()
        ]
    )
    majority = np.bincount(test.labels).max() / len(test.labels)
    lengths = sorted(set(test.prompt_lengths.tolist()))
    shown = lengths if len(lengths) <= 8 else [*lengths[:4], "...", *lengths[-4:]]
    print(f"{args.task} as text, max_length {args.max_length}, {len(test.labels)} test examples")
    print(f"prompt lengths seen: {len(lengths)} ({', '.join(map(str, shown))})")
    print(f"label guessed from prompt length: accuracy {np.mean(guess == test.labels):.3f}")
    print(f"majority class: {majority:.3f}")


if __name__ == "__main__":
    main()
