"""The commands that use a trained model: ``export``, ``predict``, ``evaluate``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fedpet.errors import FedpetError


def cmd_export(args: argparse.Namespace) -> None:
    """Write a run's model in its library's format; say how to load it."""
    from fedpet.export import export_run

    out = Path(args.out)
    written = export_run(Path(args.run), args.round, out, args.overwrite)
    print(f"wrote {', '.join(written)} in {out}")
    print(f"label texts with it: fedpet predict {out} --text '...'; see {out / 'README.md'}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Print (or write) each text's predicted label and its probability."""
    from fedpet.export import open_model
    from fedpet.inference import predictions, read_texts, unlabelled, write_predictions

    loaded = open_model(Path(args.model), args.round)
    if args.file:
        split = read_texts(Path(args.file), args.text_column, args.pair_column)
    else:
        split = unlabelled(args.text)
    rows = predictions(loaded, split)
    if args.out:
        out = Path(args.out)
        try:
            write_predictions(rows, out)
        except OSError as exc:
            raise FedpetError(f"--out {str(out)!r}: cannot write ({exc.strerror})") from None
        print(f"wrote {len(rows):,} predictions to {out}")
        return
    for row in rows:
        print(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score the model on its own task's split, another task's, or a labelled file."""
    from fedpet.configure import build_config
    from fedpet.export import open_model
    from fedpet.inference import file_split, score, task_split

    loaded = open_model(Path(args.model), args.round)
    data = build_config({"data": loaded.meta["data"]}).data
    columns = {
        name: value
        for name, value in (("text_column", args.text_column), ("label_column", args.label_column))
        if value is not None
    }
    data = dataclasses.replace(data, **columns)
    if args.file:
        where = args.file
        split = file_split(loaded, Path(args.file), data)
    else:
        if args.task:
            data = dataclasses.replace(data, task=args.task)
        where = f"{data.task} {args.split}"
        split = task_split(loaded, data, args.split)
    metrics = score(loaded, split)
    figures = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n")
    print(f"{where}: {metrics['n']:,} examples · {figures}")
