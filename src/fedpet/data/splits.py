"""What a task is: labelled texts in train/validation/test splits, and how splits are cut."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpet.errors import FedpetError


@dataclass(frozen=True)
class Split:
    """Texts (and, for sentence-pair tasks, second texts) and integer labels of one split.

    ``groups`` names, per example, the client it came from, where the data says so. In a
    generative task the texts are prompts and ``responses`` their answers; the labels then
    index the answer in a closed answer set (all 0 for open answers).
    """

    texts: list[str]
    labels: np.ndarray
    pairs: list[str] | None = None
    groups: np.ndarray | None = None  # the client each example belongs to (natural partition)
    responses: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at ``indices``, in that order."""
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        groups = None if self.groups is None else self.groups[indices]
        responses = None if self.responses is None else [self.responses[i] for i in indices]
        texts = [self.texts[i] for i in indices]
        return Split(texts, self.labels[indices], pairs, groups, responses)


@dataclass(frozen=True)
class Task:
    """A task: its label names, splits, metric and how the splits were made.

    A generative task (``generative``) is answered by writing the response; its label names
    are its closed answer set, empty for open answers.
    """

    name: str
    label_names: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    split_rule: str
    metric: str = "accuracy"
    generative: bool = False

    @property
    def num_labels(self) -> int:
        """Number of classes (of options, for a generative task; 0 for open answers)."""
        return len(self.label_names)

    @property
    def options(self) -> tuple[str, ...] | None:
        """The closed answer set of a generative task; None otherwise."""
        return self.label_names if self.generative and self.label_names else None


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
    every metric says only whether the model predicts that label. A generative task with
    open answers has no labels to check.
    """
    if task.generative and not task.label_names:
        return
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
