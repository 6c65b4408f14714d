import time

import numpy as np
import pytest

from fedpet.data.partition import (
    PARTITIONERS,
    PartitionSpec,
    dirichlet,
    label_counts,
    label_skew,
    partition,
)
from fedpet.errors import FedpetError

SCHEMES = sorted(set(PARTITIONERS) - {"natural"})  # natural needs client ids: tested below
SKEWED = ["dirichlet", "dirichlet-classwise"]


def labels(n: int = 2000, num_labels: int = 2, seed: int = 1) -> np.ndarray:
    prior = np.linspace(1.0, 2.0, num_labels)
    return np.random.default_rng(seed).choice(num_labels, size=n, p=prior / prior.sum())


def spec(k: int = 10, **kw: object) -> PartitionSpec:
    return PartitionSpec(num_clients=k, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_exact_client_count_and_every_example_used_exactly_once(scheme: str) -> None:
    y = labels(2003, num_labels=4)
    parts = partition(y, scheme, spec(10, alpha=0.5, seed=3))
    assert len(parts) == 10
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    assert all(np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_fednlp_schemes_have_equal_sizes(scheme: str) -> None:
    parts = partition(labels(2003), scheme, spec(10, alpha=0.5, seed=3))
    assert sorted(len(p) for p in parts) == [200] * 7 + [201] * 3


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition_other_seed_differs(scheme: str) -> None:
    y = labels(num_labels=4)
    a, b = partition(y, scheme, spec(seed=7)), partition(y, scheme, spec(seed=7))
    c = partition(y, scheme, spec(seed=8))
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def mean_skew(scheme: str, alpha: float, y: np.ndarray) -> float:
    runs = [
        label_skew(label_counts(y, partition(y, scheme, spec(10, alpha=alpha, seed=s)), 2))
        for s in range(5)
    ]
    return float(np.mean(runs))


@pytest.mark.parametrize("scheme", SKEWED)
def test_lower_alpha_gives_stronger_label_skew(scheme: str) -> None:
    y = labels(5000)
    iid = mean_skew("iid", 1, y)
    a10, a1, a01 = (mean_skew(scheme, a, y) for a in (10, 1, 0.2))
    assert iid < 0.05
    assert iid < a10 < a1 < a01
    assert a1 - a10 > 0.05 and a01 - a1 > 0.05


def test_lower_alpha_gives_more_unequal_sizes_under_quantity_skew() -> None:
    y = labels(5000)

    def spread(alpha: float) -> float:
        sizes = [len(p) for p in partition(y, "quantity", spec(20, alpha=alpha, seed=1))]
        return float(np.std(sizes) / np.mean(sizes))

    assert spread(100) < spread(1) < spread(0.1)
    assert mean_skew("quantity", 1, y) < 0.1  # labels stay iid


def test_shards_give_each_client_its_number_of_labels() -> None:
    y = labels(3000, num_labels=5)
    counts = label_counts(y, partition(y, "shards", spec(20, labels_per_client=2, seed=0)), 5)
    assert ((counts > 0).sum(axis=1) == 2).all()
    with pytest.raises(FedpetError, match=r"data\.labels_per_client = 6"):
        partition(y, "shards", spec(20, labels_per_client=6))


def test_label_skew_hand_computed() -> None:
    assert label_skew(np.array([[10, 0], [0, 10]])) == pytest.approx(0.5)
    assert label_skew(np.array([[5, 5], [5, 5]])) == 0.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_minimum_size_is_honoured(scheme: str) -> None:
    y = labels(2000, num_labels=4)
    parts = partition(y, scheme, spec(10, alpha=0.5, min_size=50, seed=2))
    assert min(len(p) for p in parts) >= 50


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_impossible_minimum_is_refused(scheme: str) -> None:
    with pytest.raises(FedpetError, match=r"federation\.clients = 11"):
        partition(labels(100), scheme, spec(11, min_size=10))


def test_classwise_minimum_it_cannot_reach_is_refused() -> None:
    with pytest.raises(FedpetError, match="could not give each of 1000 clients"):
        partition(labels(20_000, 5), "dirichlet-classwise", spec(1000, alpha=0.1, min_size=15))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_thousand_clients_on_100k_labels_in_a_few_seconds(scheme: str) -> None:
    y = labels(100_000, num_labels=5)
    start = time.perf_counter()
    parts = partition(y, scheme, spec(1000, alpha=0.5, seed=0))
    elapsed = time.perf_counter() - start
    assert len(parts) == 1000 and sum(len(p) for p in parts) == 100_000
    print(f"{scheme}: {elapsed:.2f} s")  # shown with -s; speed is not asserted


def test_natural_partition_follows_the_named_clients() -> None:
    groups = np.array(["bob", "amy", "bob", "cid", "amy", "bob"])
    parts = partition(np.zeros(6, dtype=np.int64), "natural", spec(3, groups=groups))
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2, 5], [3]]  # amy, bob, cid
    # the number of clients comes from the data, whatever federation.clients says
    again = partition(np.zeros(6, dtype=np.int64), "natural", spec(100, groups=groups))
    assert [p.tolist() for p in again] == [[1, 4], [0, 2, 5], [3]]
    with pytest.raises(FedpetError, match=r"needs data\.client_column"):
        partition(np.zeros(6, dtype=np.int64), "natural", spec(3))


def test_natural_partition_of_1000_clients_on_100k_examples() -> None:
    groups = np.random.default_rng(0).integers(0, 1000, 100_000).astype(str)
    parts = partition(labels(100_000), "natural", spec(1000, groups=groups))
    assert len(parts) == 1000
    assert sorted(np.concatenate(parts).tolist()) == list(range(100_000))
    assert all(len(set(groups[p].tolist())) == 1 for p in parts[:50])


def test_a_label_that_runs_out_is_filled_in_proportion_to_what_the_others_have_left() -> None:
    # FedNLP's dynamic_batch_fill. Labels of 10, 60 and 30 examples, two clients of 50, an
    # almost one-hot draw: when client 0's label runs out, the gap 50 - n_c is filled from
    # the other labels in proportion to their counts (all still in their pools)
    counts = np.array([10, 60, 30])
    labels = np.repeat(np.arange(3), counts)
    checked = 0
    for seed in range(40):
        parts = dirichlet(labels, PartitionSpec(num_clients=2, alpha=0.01, seed=seed))
        first = np.bincount(labels[parts[0]], minlength=3)
        exhausted = [c for c in range(3) if first[c] == counts[c] and counts[c] < 50]
        if len(exhausted) != 1:
            continue  # its label had enough: nothing to fill
        (c,) = exhausted
        others = [j for j in range(3) if j != c]
        gap = 50 - counts[c]
        for j in others:
            share = gap * counts[j] / counts[others].sum()
            assert abs(first[j] - share) <= 2, (seed, c, first.tolist())
        checked += 1
    assert checked >= 5
