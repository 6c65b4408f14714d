import numpy as np
import pytest

from fedpet.data.partition import label_counts, label_skew, partition
from fedpet.errors import FedpetError


def labels(n: int = 2000, prior: float = 0.58, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < prior).astype(np.int64)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_example_used_exactly_once_with_equal_sizes(scheme: str) -> None:
    y = labels(2003)
    parts = partition(y, scheme, 10, 0.5, seed=3)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))
    assert sorted(len(p) for p in parts) == [200] * 7 + [201] * 3


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_same_seed_same_partition_other_seed_differs(scheme: str) -> None:
    y = labels()
    a, b = partition(y, scheme, 10, 1.0, seed=7), partition(y, scheme, 10, 1.0, seed=7)
    c = partition(y, scheme, 10, 1.0, seed=8)
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_lower_alpha_gives_stronger_label_skew() -> None:
    y = labels(5000)

    def skew(scheme: str, alpha: float) -> float:
        runs = [
            label_skew(label_counts(y, partition(y, scheme, 20, alpha, s), 2)) for s in range(5)
        ]
        return float(np.mean(runs))

    iid, a10, a1, a01 = (
        skew("iid", 1),
        skew("dirichlet", 10),
        skew("dirichlet", 1),
        skew("dirichlet", 0.1),
    )
    assert iid < 0.05
    assert iid < a10 < a1 < a01
    assert a01 > 0.3  # at alpha 0.1 most clients hold nearly one label (max possible 0.42)
    assert a1 - a10 > 0.05 and a01 - a1 > 0.05


def test_label_skew_hand_computed() -> None:
    counts = np.array([[10, 0], [0, 10]])
    assert label_skew(counts) == pytest.approx(0.5)
    assert label_skew(np.array([[5, 5], [5, 5]])) == 0.0


def test_too_many_clients_is_refused() -> None:
    with pytest.raises(FedpetError, match=r"federation\.clients = 11"):
        partition(labels(10), "iid", 11, 1.0, seed=0)
