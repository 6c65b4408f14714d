"""GLUE tasks under the FedPETuning protocol.

Validation is a seeded share of GLUE's training set (1% for SST-2, QNLI, QQP and MNLI; 10%
for RTE, MRPC and CoLA) and test is GLUE's dev set (MNLI: matched). The data comes from
``data.data_dir`` holding the GLUE distribution's TSV files (``SST-2/train.tsv``,
``SST-2/dev.tsv``, ...), else from Hugging Face ``datasets`` (``nyu-mll/glue``; online, or
its local cache when offline).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedpet.config import DataConfig
from fedpet.data.splits import Split, Task
from fedpet.errors import FedpetError


@dataclass(frozen=True)
class GlueSpec:
    """Where one GLUE task's fields are, in the TSV files and in the datasets version."""

    folder: str
    labels: tuple[str, ...]
    val_fraction: float
    text: str
    pair: str | None
    label: str
    hf_text: str
    hf_pair: str | None
    metric: str = "accuracy"
    dev: str = "dev.tsv"
    header: bool = True


GLUE: dict[str, GlueSpec] = {
    "sst2": GlueSpec(
        "SST-2", ("negative", "positive"), 0.01, "sentence", None, "label", "sentence", None
    ),
    "cola": GlueSpec(
        "CoLA",
        ("unacceptable", "acceptable"),
        0.1,
        "3",
        None,
        "1",
        "sentence",
        None,
        metric="mcc",
        header=False,
    ),
    "mrpc": GlueSpec(
        "MRPC",
        ("not_equivalent", "equivalent"),
        0.1,
        "#1 String",
        "#2 String",
        "Quality",
        "sentence1",
        "sentence2",
        metric="f1",
    ),
    "rte": GlueSpec(
        "RTE",
        ("entailment", "not_entailment"),
        0.1,
        "sentence1",
        "sentence2",
        "label",
        "sentence1",
        "sentence2",
    ),
    "qnli": GlueSpec(
        "QNLI",
        ("entailment", "not_entailment"),
        0.01,
        "question",
        "sentence",
        "label",
        "question",
        "sentence",
    ),
    "qqp": GlueSpec(
        "QQP",
        ("not_duplicate", "duplicate"),
        0.01,
        "question1",
        "question2",
        "is_duplicate",
        "question1",
        "question2",
    ),
    "mnli": GlueSpec(
        "MNLI",
        ("entailment", "neutral", "contradiction"),
        0.01,
        "sentence1",
        "sentence2",
        "gold_label",
        "premise",
        "hypothesis",
        dev="dev_matched.tsv",
    ),
}


def _from_tsv(path: Path, spec: GlueSpec) -> Split:
    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            dtype=str,
            header=0 if spec.header else None,
            keep_default_na=False,
            on_bad_lines="skip",
            encoding="utf-8",
        )
    except (OSError, ValueError) as exc:
        raise FedpetError(f"GLUE file {str(path)!r} cannot be read: {exc}") from None
    if not spec.header:
        frame.columns = [str(c) for c in frame.columns]
    columns = [c for c in (spec.text, spec.pair, spec.label) if c is not None]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FedpetError(f"GLUE file {str(path)!r} lacks column(s) {missing}")
    raw = frame[spec.label].str.strip()
    index = {name: i for i, name in enumerate(spec.labels)}
    labels = np.array([int(v) if v.isdigit() else index.get(v, -1) for v in raw], np.int64)
    keep = labels >= 0  # unlabelled rows (e.g. MNLI's '-') are dropped
    texts = frame[spec.text][keep].tolist()
    pairs = frame[spec.pair][keep].tolist() if spec.pair else None
    return Split(texts, labels[keep], pairs)


def _from_datasets(name: str, spec: GlueSpec) -> tuple[Split, Split]:
    from datasets import load_dataset

    try:
        data = load_dataset("nyu-mll/glue", name)
    except Exception as exc:  # datasets raises many types for missing or offline data
        raise FedpetError(
            f"data.task = {name!r}: GLUE data not found ({exc.__class__.__name__}); pass "
            f"--data-dir DIR holding {spec.folder}/train.tsv and {spec.folder}/{spec.dev} "
            "(the GLUE distribution), or run once online to cache nyu-mll/glue"
        ) from None
    dev = "validation_matched" if name == "mnli" else "validation"

    def split(part: str) -> Split:
        rows = data[part]
        pairs = list(rows[spec.hf_pair]) if spec.hf_pair else None
        return Split(list(rows[spec.hf_text]), np.asarray(rows["label"], np.int64), pairs)

    return split("train"), split(dev)


def load_glue(name: str, data: DataConfig) -> Task:
    """A GLUE task: train minus a seeded validation share, and the dev set as test."""
    spec = GLUE[name]
    if data.data_dir:
        folder = Path(data.data_dir).expanduser() / spec.folder
        for file in ("train.tsv", spec.dev):
            if not (folder / file).is_file():
                raise FedpetError(f"data.data_dir: {str(folder / file)!r} does not exist")
        full, test = _from_tsv(folder / "train.tsv", spec), _from_tsv(folder / spec.dev, spec)
    else:
        full, test = _from_datasets(name, spec)
    order = np.random.default_rng(data.split_seed).permutation(len(full))
    n_val = max(1, round(spec.val_fraction * len(full)))
    val, train = full.subset(np.sort(order[:n_val])), full.subset(np.sort(order[n_val:]))
    rule = (
        f"GLUE {spec.folder}: validation = {spec.val_fraction:.0%} of train "
        f"(permutation seed {data.split_seed}); test = {spec.dev.removesuffix('.tsv')}"
    )
    return Task(name, spec.labels, train, val, test, rule, metric=spec.metric)
