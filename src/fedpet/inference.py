"""Predicting and scoring with a trained classifier (a run's, or an export's).

``fedpet predict`` labels new texts; ``fedpet evaluate`` scores a run or an export on a
split of a task, or on a labelled file, whose label names are matched to the model's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpet.config import Config, DataConfig
from fedpet.data.batching import collate, encode, length_sorted_batches
from fedpet.data.files import read_table
from fedpet.data.splits import Split
from fedpet.data.tasks import load_task
from fedpet.errors import FedpetError
from fedpet.experiment import subsample
from fedpet.export import Loaded
from fedpet.metrics import classification_metrics

SPLITS = ("train", "validation", "test")


@torch.no_grad()
def probabilities(loaded: Loaded, split: Split, batch_size: int = 64) -> np.ndarray:
    """The model's class probabilities for each example of ``split``, shape (n, labels)."""
    data = encode(loaded.tokenizer, split, loaded.max_length)
    probs = np.empty((len(data), len(loaded.labels)), dtype=np.float32)
    for idx in length_sorted_batches(data, batch_size):
        batch = collate(data, idx, torch.device("cpu"))
        logits = loaded.model(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        )
        probs[idx] = logits.softmax(-1).numpy()
    return probs


def unlabelled(texts: list[str], pairs: list[str] | None = None) -> Split:
    """A split of texts to predict (its labels are placeholders)."""
    return Split(list(texts), np.zeros(len(texts), dtype=np.int64), pairs)


def predictions(loaded: Loaded, split: Split) -> list[dict[str, Any]]:
    """Per example: its text, the predicted label's name and probability, every label's."""
    probs = probabilities(loaded, split)
    rows = []
    for i, p in enumerate(probs):
        best = int(p.argmax())
        row: dict[str, Any] = {"text": split.texts[i]}
        if split.pairs is not None:
            row["text_pair"] = split.pairs[i]
        row.update(label=loaded.labels[best], probability=round(float(p[best]), 4))
        row.update(
            {f"p_{name}": round(float(q), 4) for name, q in zip(loaded.labels, p, strict=True)}
        )
        rows.append(row)
    return rows


def read_texts(path: Path, column: str, pair_column: str | None) -> Split:
    """Texts to predict: a ``.txt`` file (one per line) or a table's ``column``."""
    if path.suffix == ".txt":
        if not path.is_file():
            raise FedpetError(f"--file {str(path)!r} does not exist")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise FedpetError(f"--file {str(path)!r} holds no text")
        return unlabelled(lines)
    frame = read_table(path)
    for name in (column, pair_column):
        if name is not None and name not in frame.columns:
            have = ", ".join(map(str, frame.columns[:8]))
            raise FedpetError(
                f"--file {str(path)!r} has no column {name!r} (set --text-column); it has: {have}"
            )
    pairs = None if pair_column is None else frame[pair_column].fillna("").astype(str).tolist()
    return unlabelled(frame[column].fillna("").astype(str).tolist(), pairs)


def write_predictions(rows: list[dict[str, Any]], out: Path) -> None:
    """Predictions as CSV, TSV or JSONL, by ``out``'s extension."""
    frame = pd.DataFrame(rows)
    if out.suffix == ".jsonl":
        frame.to_json(out, orient="records", lines=True, force_ascii=False)
    elif out.suffix in (".csv", ".tsv"):
        frame.to_csv(out, sep="\t" if out.suffix == ".tsv" else ",", index=False)
    else:
        raise FedpetError(f"--out {str(out)!r}: write .csv, .tsv or .jsonl")


def relabel(split: Split, names: tuple[str, ...], model_labels: tuple[str, ...]) -> Split:
    """``split`` (labels indexing ``names``) with labels indexing the model's label names."""
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = sorted(set(names[i] for i in np.unique(split.labels)) - set(index))
    if unknown:
        raise FedpetError(
            f"labels {unknown[:3]} are not the model's: it predicts {list(model_labels)}"
        )
    mapped = np.array([index[names[i]] for i in split.labels], dtype=np.int64)
    return dataclasses.replace(split, labels=mapped)


def task_split(loaded: Loaded, data: DataConfig, split: str) -> Split:
    """One split of the task ``data`` names, in the model's label order."""
    if split not in SPLITS:
        raise FedpetError(f"--split {split!r} is not allowed: choose one of {', '.join(SPLITS)}")
    # cut as the run cut it: max_eval_samples of validation and test, by the split seed
    task = subsample(load_task(data), Config(data=data))
    chosen: Split = getattr(task, split)
    return relabel(chosen, task.label_names, loaded.labels)


def file_split(loaded: Loaded, path: Path, data: DataConfig) -> Split:
    """Every row of a labelled file (columns as ``data`` names them), in the model's labels."""
    from fedpet.data.files import labelled_rows

    texts, pairs, labels = labelled_rows(path, data)
    names = tuple(sorted(set(labels)))
    index = {name: i for i, name in enumerate(names)}
    split = Split(texts, np.array([index[x] for x in labels], dtype=np.int64), pairs)
    return relabel(split, names, loaded.labels)


def score(loaded: Loaded, split: Split) -> dict[str, float]:
    """Classification metrics of the model on ``split``, and its size."""
    preds = probabilities(loaded, split).argmax(-1)
    return {**classification_metrics(preds, split.labels, len(loaded.labels)), "n": len(split)}
