"""Partitions of the training examples across clients: pure functions of (labels, spec).

Every partitioner returns one sorted index array per client; together they use every
training example exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedpet.errors import FedpetError


@dataclass(frozen=True)
class PartitionSpec:
    """How to partition: number of clients and the options the schemes read.

    Attributes
    ----------
    alpha
        Dirichlet concentration of ``dirichlet``, ``dirichlet-classwise`` and ``quantity``
        (smaller = more skew).
    min_size
        Fewest examples any client may hold; a partition that cannot give it is refused.
    labels_per_client
        Labels each client holds under ``shards``.
    groups
        Per example, the client the data names (``natural``).
    """

    num_clients: int
    alpha: float = 1.0
    min_size: int = 1
    labels_per_client: int = 2
    seed: int = 0
    groups: np.ndarray | None = None


Partitioner = Callable[[np.ndarray, PartitionSpec], list[np.ndarray]]


def equal_sizes(n: int, spec: PartitionSpec) -> np.ndarray:
    """Client sizes as equal as possible, summing to ``n`` (the first ``n % k`` get one more)."""
    k = spec.num_clients
    if n // k < spec.min_size:
        raise FedpetError(
            f"federation.clients = {k} is not allowed: {n} training examples cannot give every "
            f"client data.min_client_size = {spec.min_size}; use at most {n // spec.min_size}"
        )
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    return sizes


def iid(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Shuffle and cut into equal-size clients."""
    order = np.random.default_rng(spec.seed).permutation(len(labels))
    bounds = np.cumsum(equal_sizes(len(labels), spec))[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


def dirichlet(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Label skew of FedNLP/FedPETuning: equal sizes, label mix ~ Dir(alpha x global prior).

    Each client draws its label proportions and asks for that many examples of each label
    (largest-remainder rounding), label by label. Where a label has run out, the gap is
    filled at once from the other labels in proportion to what each has left (FedNLP's
    ``label_skew_process`` with ``dynamic_batch_fill``). The sizes add up to the number of
    examples, so the last client takes what is left.
    """
    rng = np.random.default_rng(spec.seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    prior = counts / counts.sum()
    parts: list[np.ndarray] = []
    for size in equal_sizes(len(labels), spec):
        want = _round_to_total(rng.dirichlet(spec.alpha * prior) * size, int(size))
        taken: list[int] = []
        for c, pool in enumerate(pools):
            k = min(int(want[c]), len(pool))
            taken += pool[:k]
            del pool[:k]
            for other, share in proportional_fill([len(p) for p in pools], int(want[c]) - k):
                taken += pools[other][:share]
                del pools[other][:share]
        parts.append(np.sort(np.asarray(taken, dtype=np.int64)))
    return parts


def proportional_fill(left: list[int], gap: int) -> list[tuple[int, int]]:
    """How many examples to take from each label to fill ``gap``: (label, count) pairs.

    In proportion to what each label has ``left`` (FedNLP's ``dynamic_batch_fill``): each
    gets the ceiling of its share of the gap, at most what it has, smallest pools first,
    until the gap is filled; what rounding and exhausted pools leave open is shared out
    again the same way.
    """
    fill = [0] * len(left)
    while gap > 0:
        spare = [n - f for n, f in zip(left, fill, strict=True)]
        total = sum(spare)
        if total == 0:
            break
        open_ = gap
        for c in sorted(range(len(left)), key=lambda i: spare[i]):
            k = min(math.ceil(spare[c] * open_ / total), spare[c], gap)
            fill[c] += k
            gap -= k
    return [(c, k) for c, k in enumerate(fill) if k]


def quantity(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Quantity skew: sizes ~ Dir(alpha) over clients (after ``min_size`` each), iid labels."""
    n, k = len(labels), spec.num_clients
    rng = np.random.default_rng(spec.seed)
    spare = n - k * spec.min_size
    if spare < 0:
        equal_sizes(n, spec)  # raises the clear error
    sizes = spec.min_size + _round_to_total(rng.dirichlet(np.full(k, spec.alpha)) * spare, spare)
    order = rng.permutation(n)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def dirichlet_classwise(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Each label's examples split across clients by Dir(alpha): unequal sizes and mixes.

    The scheme of flwr-datasets' DirichletPartitioner (and NIID-Bench), written over numpy:
    that partitioner selects a datasets.Dataset per client, seconds at 1,000 clients. Draws
    are repeated (up to 100 times) until every client holds ``min_size`` examples.
    """
    rng = np.random.default_rng(spec.seed)
    k = spec.num_clients
    by_label = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(100):
        chunks: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in by_label:
            cuts = (np.cumsum(rng.dirichlet(np.full(k, spec.alpha))) * len(idx)).astype(int)
            for client, piece in enumerate(np.split(rng.permutation(idx), cuts[:-1])):
                chunks[client].append(piece)
        parts = [np.sort(np.concatenate(c)) for c in chunks]
        if min(len(p) for p in parts) >= spec.min_size:
            return parts
    raise FedpetError(
        f"data.partition = 'dirichlet-classwise' could not give each of {k} clients "
        f"data.min_client_size = {spec.min_size} examples at alpha {spec.alpha} in 100 draws; "
        "use fewer clients, a larger alpha or a smaller minimum"
    )


def shards(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Pathological skew: each client holds ``labels_per_client`` distinct labels.

    As flwr-datasets' PathologicalPartitioner (random assignment), over numpy: every label
    goes to at least one client, and each label's examples are split evenly among the
    clients holding it.
    """
    rng = np.random.default_rng(spec.seed)
    classes = np.unique(labels)
    k, per = spec.num_clients, spec.labels_per_client
    if not 1 <= per <= len(classes):
        raise FedpetError(
            f"data.labels_per_client = {per} is not allowed: "
            f"an integer from 1 to the task's {len(classes)} labels"
        )
    if k * per < len(classes):
        raise FedpetError(
            f"data.labels_per_client = {per} with {k} clients cannot hold all "
            f"{len(classes)} labels; use more clients or more labels per client"
        )
    held: list[set[int]] = [set() for _ in range(k)]
    for slot, c in enumerate(rng.permutation(len(classes))):
        held[slot % k].add(int(c))  # every label to some client first
    for client in held:
        others = [int(c) for c in rng.permutation(len(classes)) if int(c) not in client]
        client.update(others[: per - len(client)])
    chunks: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c, label in enumerate(classes):
        holders = [i for i in range(k) if c in held[i]]
        idx = rng.permutation(np.flatnonzero(labels == label))
        for i, piece in zip(holders, np.array_split(idx, len(holders)), strict=True):
            chunks[i].append(piece)
    return [np.sort(np.concatenate(c)) for c in chunks]


def natural(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """The clients the data names (``data.client_column``), in sorted order of their ids.

    Their number comes from the data (``spec.num_clients`` is not used).
    """
    if spec.groups is None:
        raise FedpetError(
            "data.partition = 'natural' needs data.client_column: a column of a file:PATH "
            "task naming each row's client"
        )
    ids, inverse = np.unique(spec.groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1])


def _round_to_total(quota: np.ndarray, total: int) -> np.ndarray:
    base: np.ndarray = np.floor(quota).astype(np.int64)
    for i in np.argsort(-(quota - base))[: total - int(base.sum())]:
        base[i] += 1
    return base


ALPHA_PARTITIONS = ("dirichlet", "dirichlet-classwise", "quantity")
"""The schemes that ``data.alpha`` shapes."""

PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "dirichlet-classwise": dirichlet_classwise,
    "quantity": quantity,
    "shards": shards,
    "natural": natural,
}


def partition(labels: np.ndarray, scheme: str, spec: PartitionSpec) -> list[np.ndarray]:
    """Split example indices across clients with the named scheme; check the minimum size."""
    if scheme not in PARTITIONERS:
        raise FedpetError(
            f"data.partition = {scheme!r} is not allowed: choose one of {sorted(PARTITIONERS)}"
        )
    parts = PARTITIONERS[scheme](labels, spec)
    smallest = min(len(p) for p in parts)
    if smallest < spec.min_size:
        raise FedpetError(
            f"data.partition = {scheme!r} gave a client {smallest} examples, fewer than "
            f"data.min_client_size = {spec.min_size}; use fewer clients or another scheme"
        )
    return parts


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


def hold_out(
    parts: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's examples split into (train, local test), drawn from its own data.

    A client of ``n`` examples holds out ``fraction x n`` of them (rounded half up), drawn
    at random with ``seed``: its test split carries its label skew. Both parts stay sorted.
    A client that would be left with no training or no test example is refused.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k, part in enumerate(parts):
        n = len(part)
        held = math.floor(fraction * n + 0.5)
        if not 0 < held < n:
            short = "no test example" if held == 0 else "no training example"
            raise FedpetError(
                f"data.client_test_fraction = {fraction:g} leaves client {k} ({n} examples) "
                f"{short}; choose a fraction that leaves each client both, or raise "
                "data.min_client_size"
            )
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.choice(n, size=held, replace=False)] = True
        train.append(part[~chosen])
        test.append(part[chosen])
    return train, test
