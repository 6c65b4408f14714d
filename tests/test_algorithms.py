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
