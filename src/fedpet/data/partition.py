"""Partitions of the training examples across clients: pure functions of (labels, rng).

Every partitioner returns one sorted index array per client; together they use every
training example exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedpet.errors import FedpetError

Partitioner = Callable[[np.ndarray, int, float, np.random.Generator], list[np.ndarray]]


def equal_sizes(n: int, num_clients: int) -> np.ndarray:
    """Client sizes as equal as possible, summing to ``n`` (the first ``n % k`` get one more)."""
    if n < num_clients:
        raise FedpetError(
            f"federation.clients = {num_clients} is not allowed: the task has only {n} "
            "training examples and every client needs at least 1"
        )
    sizes = np.full(num_clients, n // num_clients, dtype=np.int64)
    sizes[: n % num_clients] += 1
    return sizes


def iid(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle and cut into equal-size clients (``alpha`` is unused)."""
    order = rng.permutation(len(labels))
    bounds = np.cumsum(equal_sizes(len(labels), num_clients))[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew of FedNLP/FedPETuning: equal sizes, label mix ~ Dir(alpha x global prior).

    Each client draws its label proportions, asks for that many examples of each label
    (largest-remainder rounding), and where a label has run out fills the gap from the
    labels that remain, most plentiful first. The last client takes what is left.
    """
    classes, counts = np.unique(labels, return_counts=True)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    prior = counts / counts.sum()
    sizes = equal_sizes(len(labels), num_clients)
    parts: list[np.ndarray] = []
    for size in sizes:
        want = _round_to_total(rng.dirichlet(alpha * prior) * size, int(size))
        taken: list[int] = []
        for c, pool in enumerate(pools):
            k = min(int(want[c]), len(pool))
            taken += pool[:k]
            del pool[:k]
        while len(taken) < size:
            richest = max(pools, key=len)
            k = min(int(size) - len(taken), len(richest))
            taken += richest[:k]
            del richest[:k]
        parts.append(np.sort(np.asarray(taken, dtype=np.int64)))
    return parts


def _round_to_total(quota: np.ndarray, total: int) -> np.ndarray:
    base: np.ndarray = np.floor(quota).astype(np.int64)
    for i in np.argsort(-(quota - base))[: total - int(base.sum())]:
        base[i] += 1
    return base


PARTITIONERS: dict[str, Partitioner] = {"iid": iid, "dirichlet": dirichlet}


def partition(
    labels: np.ndarray, scheme: str, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Split example indices across ``num_clients`` with the named scheme, seeded."""
    if scheme not in PARTITIONERS:
        raise FedpetError(
            f"data.partition = {scheme!r} is not allowed: choose one of {sorted(PARTITIONERS)}"
        )
    return PARTITIONERS[scheme](labels, num_clients, alpha, np.random.default_rng(seed))


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_labels: int) -> np.ndarray:
    """Clients x labels matrix of example counts."""
    return np.stack([np.bincount(labels[p], minlength=num_labels) for p in parts])


def label_skew(counts: np.ndarray) -> float:
    """Mean total-variation distance between each client's label mix and the global one.

    0 for identical mixes; approaches 1 - max prior when every client holds a single label.
    """
    sizes = counts.sum(axis=1, keepdims=True)
    local = counts / np.maximum(sizes, 1)
    prior = counts.sum(axis=0) / counts.sum()
    return float(0.5 * np.abs(local - prior).sum(axis=1).mean())
