"""What a task is: labelled texts in train/validation/test splits, and how splits are cut."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpet.errors import FedpetError


@dataclass(frozen=True)
class Split:
    """Texts (and, for sentence-pair tasks, second texts) and integer labels of one split.

    ``groups`` names, per example, the client it came from, where the data says so.
    """

    texts: list[str]
    labels: np.ndarray
    pairs: list[str] | None = None
    groups: np.ndarray | None = None  # the client each example belongs to (natural partition)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at ``indices``, in that order."""
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        groups = None if self.groups is None else self.groups[indices]
        return Split([self.texts[i] for i in indices], self.labels[indices], pairs, groups)


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


def seeded_split(
    full: Split, seed: int, fractions: tuple[float, float] = (0.8, 0.1)
) -> tuple[Split, Split, Split]:
    """Shuffle with ``seed`` and cut into train/validation/test by ``fractions`` (rest = test)."""
    order = np.random.default_rng(seed).permutation(len(full))
    n_train = round(fractions[0] * len(full))
    n_val = round(fractions[1] * len(full))
    cuts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    train, val, test = (full.subset(np.sort(c)) for c in cuts)
    return train, val, test


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


def check_labels(task: Task) -> None:
    """Refuse splits on which a classifier learns, or is measured on, nothing.

    Training, validation and test each need at least two labels: on a split of one label
    every metric says only whether the model predicts that label.
    """
    splits = {"training": task.train, "validation": task.validation, "test": task.test}
    for name, split in splits.items():
        present = np.unique(split.labels)
        if len(present) < 2:
            held = [task.label_names[int(i)] for i in present]
            raise FedpetError(
                f"data.task = {task.name!r}: the {name} split holds a single label {held}; "
                "a classifier needs at least two (add rows of the other labels, or raise "
                "data.max_train_samples / data.max_eval_samples)"
            )
