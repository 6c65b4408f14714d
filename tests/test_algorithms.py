import pytest
import torch

from fedpet.algorithms import Aggregate, get_algorithm
from fedpet.config import AlgorithmConfig


def test_fedavg_weights_updates_by_example_count() -> None:
    theta = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    updates = [
        ({"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0])}, 10),
        ({"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([-1.0])}, 30),
    ]
    agg = Aggregate(theta)
    for delta, n in updates:
        agg.add(delta, float(n))
    algo = get_algorithm(AlgorithmConfig())
    new, server = algo.server_update(theta, algo.init_server_state(theta), agg)
    # by hand: w += (10*[1,0] + 30*[0,4]) / 40 = [0.25, 3.0]; b += (30 - 30) / 40 = 0
    assert torch.allclose(new["w"], torch.tensor([1.25, 5.0]))
    assert torch.allclose(new["b"], torch.tensor([0.5]))
    assert server == {}
    assert agg.num_clients == 2 and agg.total_weight == 40.0
    # an unweighted mean would give w = [1.5, 4.0]: the weighting matters
    assert not torch.allclose(new["w"], torch.tensor([1.5, 4.0]))


def test_server_lr_scales_the_mean_update() -> None:
    theta = {"w": torch.zeros(3)}
    agg = Aggregate(theta)
    agg.add({"w": torch.ones(3)}, 2.0)
    new, _ = get_algorithm(AlgorithmConfig(server_lr=0.5)).server_update(theta, {}, agg)
    assert torch.equal(new["w"], torch.full((3,), 0.5))


def test_server_update_is_pure() -> None:
    theta = {"w": torch.zeros(2)}
    agg = Aggregate(theta)
    agg.add({"w": torch.ones(2)}, 1.0)
    get_algorithm(AlgorithmConfig()).server_update(theta, {}, agg)
    assert torch.equal(theta["w"], torch.zeros(2))


def test_empty_aggregate_is_an_error() -> None:
    with pytest.raises(ValueError, match="no client update"):
        Aggregate({"w": torch.zeros(1)}).mean()


def _aggregate(values: list[list[float]], keep: bool = True) -> Aggregate:
    agg = Aggregate({"w": torch.zeros(len(values[0]))}, keep_updates=keep)
    for row, n in zip(values, range(1, len(values) + 1), strict=True):
        agg.add({"w": torch.tensor(row)}, float(n))
    return agg


def _server(name: str, values: list[list[float]], **options: float) -> torch.Tensor:
    algo = get_algorithm(AlgorithmConfig(name=name, **options))
    theta = {"w": torch.zeros(len(values[0]))}
    agg = _aggregate(values, keep=algo.keeps_updates)
    return algo.server_update(theta, algo.init_server_state(theta), agg)[0]["w"]


def test_median_by_hand() -> None:
    # per coordinate: odd count -> the middle value; even count -> mean of the two middle ones
    odd = _server("median", [[1.0, -3.0], [5.0, 0.0], [100.0, 2.0]])
    assert torch.equal(odd, torch.tensor([5.0, 0.0]))
    even = _server("median", [[1.0, 4.0], [2.0, -1.0], [3.0, 0.0], [100.0, 7.0]])
    assert torch.equal(even, torch.tensor([2.5, 2.0]))
    # unweighted: the weights 1..4 given to Aggregate.add do not move it
    half = _server("median", [[1.0, 4.0], [2.0, -1.0], [3.0, 0.0], [100.0, 7.0]], server_lr=0.5)
    assert torch.equal(half, torch.tensor([1.25, 1.0]))


def test_trimmed_mean_by_hand() -> None:
    # 5 clients, fraction 0.2 -> drop 1 at each end: mean(2, 3, 4) = 3 and mean(0, 1, 2) = 1
    five = [[1.0, 2.0], [2.0, -50.0], [3.0, 0.0], [4.0, 1.0], [1000.0, 60.0]]
    assert torch.allclose(_server("trimmed-mean", five), torch.tensor([3.0, 1.0]))
    # fraction 0.4 of 5 -> drop 2 at each end: the median
    assert torch.allclose(
        _server("trimmed-mean", five, trim_fraction=0.4), torch.tensor([3.0, 1.0])
    )
    # fraction 0 -> the plain (unweighted) mean
    plain = _server("trimmed-mean", five, trim_fraction=0.0)
    assert torch.allclose(plain, torch.tensor([202.0, 2.6]))
    # 4 clients, fraction 0.2 -> floor(0.8) = 0 dropped
    four = [[1.0], [2.0], [3.0], [10.0]]
    assert torch.allclose(_server("trimmed-mean", four), torch.tensor([4.0]))


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
def test_robust_aggregators_withstand_one_adversary_of_five(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(50, generator=gen)
    honest = [(target + 0.1 * torch.randn(50, generator=gen)).tolist() for _ in range(4)]
    for attack in (torch.full((50,), 1e6), -1e6 * target, torch.randn(50, generator=gen) * 1e6):
        updates = [*honest[:2], attack.tolist(), *honest[2:]]
        robust = _server(name, updates)
        fedavg = _server("fedavg", updates)
        low = torch.tensor(honest).min(0).values
        high = torch.tensor(honest).max(0).values
        # every coordinate stays within the honest clients' range; FedAvg is dragged away
        assert bool(((robust >= low - 1e-6) & (robust <= high + 1e-6)).all())
        assert float((robust - target).norm()) < 0.2 * float(target.norm())
        assert float((fedavg - target).norm()) > 1e4


def test_robust_aggregators_need_kept_updates() -> None:
    with pytest.raises(ValueError, match="keep_updates"):
        get_algorithm(AlgorithmConfig(name="median")).server_update(
            {"w": torch.zeros(1)}, {}, _aggregate([[1.0]], keep=False)
        )
