import pytest
import torch

from fedpet.algorithms import ALGORITHMS, Aggregate, make_algorithm
from fedpet.state import add


def test_fedavg_weights_updates_by_example_count() -> None:
    theta = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    updates = [
        ({"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0])}, 10),
        ({"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([-1.0])}, 30),
    ]
    agg = Aggregate()
    for delta, n in updates:
        agg.add(delta, float(n))
    algo = make_algorithm("fedavg")
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
    agg = Aggregate()
    agg.add({"w": torch.ones(3)}, 2.0)
    new, _ = make_algorithm("fedavg", server_lr=0.5).server_update(theta, {}, agg)
    assert torch.equal(new["w"], torch.full((3,), 0.5))


def _snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_server_update_is_pure(name: str) -> None:
    # a LoRA module (rank 4) and a head; clients of ranks 2 and 4 for the ranked algorithms
    ranks = {"ranks": (2, 4)} if name in ("hetlora", "flexlora") else {}
    algo = make_algorithm(name, **ranks)
    gen = torch.Generator().manual_seed(0)
    theta = {
        "m.lora_A.default.weight": torch.randn(4, 6, generator=gen),
        "m.lora_B.default.weight": torch.randn(5, 4, generator=gen),
        "head.weight": torch.randn(2, 5, generator=gen),
    }
    server = algo.init_server_state(theta)

    def round_aggregate(global_state, server_state) -> Aggregate:
        download = algo.download(global_state, server_state)
        agg = Aggregate(keep_updates=algo.keeps_updates, population=10)
        for k in range(5):
            view = algo.client_view(download, k)
            update = {n: 0.1 * torch.randn(t.shape, generator=gen) for n, t in view.items()}
            agg.add(algo.server_view(download, update, k), float(k + 1))
        return agg

    # a second round, so that the server state is not its initial value
    theta, server = algo.server_update(theta, server, round_aggregate(theta, server))
    agg = round_aggregate(theta, server)
    before = (_snapshot(theta), _snapshot(server), _snapshot(agg.weighted_sum))
    kept = [_snapshot(u) for u in agg.updates]
    counts = (agg.total_weight, agg.num_clients, agg.population)
    new_theta, new_server = algo.server_update(theta, server, agg)
    assert _same(theta, before[0]) and _same(server, before[1])
    assert (
        _same(agg.weighted_sum, before[2])
        and (agg.total_weight, agg.num_clients, agg.population) == counts
    )
    assert len(agg.updates) == len(kept) and all(map(_same, agg.updates, kept))
    assert new_theta.keys() == theta.keys() and not _same(new_theta, theta)  # it did update
    # the same inputs give the same outputs: nothing was kept on the algorithm object
    again_theta, again_server = algo.server_update(theta, server, agg)
    assert _same(again_theta, new_theta) and _same(again_server, new_server)


def test_empty_aggregate_is_an_error() -> None:
    with pytest.raises(ValueError, match="no client update"):
        Aggregate().mean()


def _aggregate(values: list[list[float]], keep: bool = True) -> Aggregate:
    agg = Aggregate(keep_updates=keep)
    for row, n in zip(values, range(1, len(values) + 1), strict=True):
        agg.add({"w": torch.tensor(row)}, float(n))
    return agg


def _server(name: str, values: list[list[float]], **options: float) -> torch.Tensor:
    algo = make_algorithm(name, **options)
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
        make_algorithm("median").server_update(
            {"w": torch.zeros(1)}, {}, _aggregate([[1.0]], keep=False)
        )


def _two_rounds(name: str, **options: float) -> list[torch.Tensor]:
    """The global ``w`` after each of two rounds whose mean updates are d1 then d2."""
    algo = make_algorithm(name, **options)
    theta = {"w": torch.tensor([1.0, -2.0])}
    server = algo.init_server_state(theta)
    out = []
    for d in ([0.5, -0.25], [-0.1, 0.3]):
        agg = Aggregate()
        agg.add({"w": torch.tensor(d)}, 3.0)
        theta, server = algo.server_update(theta, server, agg)
        out.append(theta["w"])
    return out


def test_fedavgm_without_momentum_is_fedavg_and_with_it_matches_hand() -> None:
    fedavg = _two_rounds("fedavg")
    plain = _two_rounds("fedavgm", momentum=0.0, server_lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, fedavg, strict=True))
    # momentum 0.9, lr 1: v1 = d1, w1 = w0 + d1; v2 = 0.9 d1 + d2, w2 = w1 + v2
    w1, w2 = _two_rounds("fedavgm")
    assert torch.allclose(w1, torch.tensor([1.5, -2.25]))
    assert torch.allclose(w2, torch.tensor([1.5 + 0.45 - 0.1, -2.25 - 0.225 + 0.3]))


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_step_matches_hand(name: str) -> None:
    beta1, beta2, tau, lr = 0.9, 0.99, 1e-3, 1e-2
    d = torch.tensor([0.5, -0.25])
    m = (1 - beta1) * d
    v0 = torch.full((2,), tau**2)
    v = {
        "fedadam": beta2 * v0 + (1 - beta2) * d**2,
        "fedyogi": v0 - (1 - beta2) * d**2 * torch.sign(v0 - d**2),
        "fedadagrad": v0 + d**2,
    }[name]
    expected = torch.tensor([1.0, -2.0]) + lr * m / (v.sqrt() + tau)
    w1, _ = _two_rounds(name)
    assert torch.allclose(w1, expected, atol=1e-7)
    # the defaults: the paper's server lr 1e-2, beta1 0.9, beta2 0.99, tau 1e-3
    assert make_algorithm(name).server_lr == lr


def test_adaptive_state_is_server_state() -> None:
    algo = make_algorithm("fedadam")
    theta = {"w": torch.zeros(2)}
    state = algo.init_server_state(theta)
    assert sorted(state) == ["m.w", "v.w"] and torch.equal(state["v.w"], torch.full((2,), 1e-6))


def test_proximal_term_adds_mu_times_drift_to_the_gradient() -> None:
    from fedpet.algorithms.fedprox import ProximalTerm

    start = {"w": torch.tensor([1.0, 2.0])}
    w = torch.nn.Parameter(torch.tensor([1.5, 1.0]))
    task = (w * torch.tensor([3.0, 4.0])).sum()
    ProximalTerm(start, mu=0.1).loss(task, {"w": w}).backward()
    assert w.grad is not None
    assert torch.allclose(w.grad, torch.tensor([3.0 + 0.1 * 0.5, 4.0 + 0.1 * -1.0]))


def test_lora_error_matches_the_formula_and_vanishes_with_a_shared_a() -> None:
    from fedpet.methods.lora import factor_pairs
    from fedpet.runtime.lora_error import LoraError

    gen = torch.Generator().manual_seed(1)
    a_name, b_name = "m.lora_A.weight", "m.lora_B.weight"
    received = {a_name: torch.randn(2, 5, generator=gen), b_name: torch.randn(4, 2, generator=gen)}
    clients = [({k: torch.randn(t.shape, generator=gen) for k, t in received.items()}, w)
               for w in (1.0, 3.0)]  # fmt: skip
    tracker = LoraError(factor_pairs(received), frozen={})
    for delta, w in clients:
        tracker.add(add(received, delta), w)
    p = [w / 4.0 for _, w in clients]
    a_k = [received[a_name] + d[a_name] for d, _ in clients]
    b_k = [received[b_name] + d[b_name] for d, _ in clients]
    exact = sum(pk * b @ a for pk, a, b in zip(p, a_k, b_k, strict=True))
    averaged = sum(pk * b for pk, b in zip(p, b_k, strict=True)) @ sum(
        pk * a for pk, a in zip(p, a_k, strict=True)
    )
    expected = float(torch.linalg.matrix_norm(exact - averaged) / torch.linalg.matrix_norm(exact))
    error = tracker.error()
    assert error is not None and error > 0.1 and abs(error - expected) < 1e-6
    # FFA-LoRA: A frozen (not in the state) and shared, so averaging B averages B A exactly
    shared = LoraError(factor_pairs([b_name]), frozen={a_name: received[a_name]})
    for delta, w in clients:
        shared.add({b_name: received[b_name] + delta[b_name]}, w)
    frozen_error = shared.error()
    assert frozen_error is not None and frozen_error < 1e-6


def test_scaffold_control_variates_follow_option_ii() -> None:
    from fedpet.algorithms.scaffold import CONTROL

    algo = make_algorithm("scaffold")
    x, y = torch.tensor([1.0, -1.0]), torch.tensor([0.8, -0.5])
    c, c_k = torch.tensor([0.1, 0.2]), torch.tensor([-0.3, 0.05])
    received = {"w": x, CONTROL + "w": c}
    steps, lr, n = 4, 0.05, 8
    update, kept = algo.client_update(received, {"w": y}, {CONTROL + "w": c_k}, steps, {"w": lr}, n)
    c_new = c_k - c + (x - y) / (steps * lr)  # the paper's option II
    assert torch.allclose(kept[CONTROL + "w"], c_new)
    assert torch.allclose(update["w"], y - x)
    assert torch.allclose(update[CONTROL + "w"], (c_new - c_k) / n)
    # a client sampled for the first time starts from c_k = 0
    _, first = algo.client_update(received, {"w": y}, {}, steps, {"w": lr}, n)
    assert torch.allclose(first[CONTROL + "w"], -c + (x - y) / (steps * lr))


def test_scaffold_server_averages_controls_over_all_clients() -> None:
    from fedpet.algorithms.scaffold import CONTROL

    algo = make_algorithm("scaffold")
    theta = {"w": torch.tensor([1.0, 2.0])}
    server = algo.init_server_state(theta)
    assert torch.equal(server[CONTROL + "w"], torch.zeros(2))
    server = {CONTROL + "w": torch.tensor([0.5, 0.5])}
    agg = Aggregate(population=10)
    clients = [(torch.tensor([0.2, 0.0]), torch.tensor([1.0, -2.0]), 2),
               (torch.tensor([0.0, 0.4]), torch.tensor([3.0, 4.0]), 6)]  # fmt: skip
    for delta_y, delta_c, n in clients:
        agg.add({"w": delta_y, CONTROL + "w": delta_c / n}, float(n))
    new, new_server = algo.server_update(theta, server, agg)
    # x += weighted mean of y - x; c += (sum of c_k+ - c_k) / N with N = 10 clients in all
    assert torch.allclose(new["w"], torch.tensor([1.0 + 0.2 * 2 / 8, 2.0 + 0.4 * 6 / 8]))
    assert torch.allclose(new_server[CONTROL + "w"], torch.tensor([0.5 + 0.4, 0.5 + 0.2]))


def test_drift_correction_adds_c_minus_c_k_to_the_gradient() -> None:
    from fedpet.algorithms.scaffold import CONTROL

    algo = make_algorithm("scaffold")
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    received = {"w": w.detach().clone(), CONTROL + "w": torch.tensor([0.5, -1.0])}
    hook = algo.client_hook(received, {CONTROL + "w": torch.tensor([0.25, 0.25])})
    hook.loss((w**2).sum(), {"w": w}).backward()
    assert w.grad is not None
    assert torch.allclose(w.grad, torch.tensor([2.0 + 0.25, 4.0 - 1.25]))


def _lora_state(gen: torch.Generator, r: int = 4) -> dict[str, torch.Tensor]:
    return {
        "head.weight": torch.randn(2, 6, generator=gen),
        "m.lora_A.weight": torch.randn(r, 6, generator=gen),
        "m.lora_B.weight": torch.randn(5, r, generator=gen),
    }


def _ranked_round(name: str, ranks: tuple[int, ...], weights: list[float], **options):
    """One round of ``name`` by hand: the global, the clients' trained views, the new global."""
    gen = torch.Generator().manual_seed(3)
    algo = make_algorithm(name, ranks=ranks, **options)
    theta = _lora_state(gen)
    agg, trained = Aggregate(), []
    for k, w in enumerate(weights):
        view = algo.client_view(theta, k)
        update = {n: torch.randn(t.shape, generator=gen) for n, t in view.items()}
        trained.append(add(view, update))
        agg.add(algo.server_view(theta, update, k), w)
    new, _ = algo.server_update(theta, {}, agg)
    return algo, theta, trained, new


def test_ranked_clients_hold_their_cut_of_the_global_state() -> None:
    algo = make_algorithm("hetlora", ranks=(1, 3))
    theta = _lora_state(torch.Generator().manual_seed(0))
    views = [algo.client_view(theta, k) for k in range(3)]
    shapes = [(v["m.lora_A.weight"].shape, v["m.lora_B.weight"].shape) for v in views]
    assert shapes == [((1, 6), (5, 1)), ((3, 6), (5, 3)), ((1, 6), (5, 1))]  # ranks in turn
    assert torch.equal(views[1]["m.lora_A.weight"], theta["m.lora_A.weight"][:3])
    assert torch.equal(views[1]["m.lora_B.weight"], theta["m.lora_B.weight"][:, :3])
    assert all(torch.equal(v["head.weight"], theta["head.weight"]) for v in views)


def test_hetlora_averages_zero_padded_updates() -> None:
    _algo, theta, trained, new = _ranked_round("hetlora", (2, 4), [1.0, 3.0], weighting="examples")
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    delta_a = [trained[k][a] - theta[a][: 2 * (k + 1)] for k in range(2)]
    by_hand = theta[a].clone()
    by_hand[:2] += (1.0 * delta_a[0] + 3.0 * delta_a[1][:2]) / 4
    by_hand[2:] += 3.0 * delta_a[1][2:] / 4  # the rank-2 client adds zeros there
    assert torch.allclose(new[a], by_hand, atol=1e-6)
    assert new[b].shape == theta[b].shape and new.keys() == theta.keys()


def test_flexlora_with_equal_ranks_gives_the_best_rank_r_mean_product() -> None:
    _algo, _theta, trained, new = _ranked_round("flexlora", (), [1.0, 3.0])
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    mean = (1.0 * trained[0][b] @ trained[0][a] + 3.0 * trained[1][b] @ trained[1][a]) / 4
    u, s, vh = torch.linalg.svd(mean.double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose((new[b] @ new[a]).double(), best, atol=1e-5)
    head = (1.0 * trained[0]["head.weight"] + 3.0 * trained[1]["head.weight"]) / 4
    assert torch.allclose(new["head.weight"], head, atol=1e-6)
    # A's rows are orthonormal, B's columns carry the singular values in decreasing order
    assert torch.allclose(new[a] @ new[a].T, torch.eye(4), atol=1e-5)
    norms = torch.linalg.vector_norm(new[b], dim=0)
    assert torch.allclose(norms, s[:4].float(), atol=1e-5) and bool((norms[:-1] >= norms[1:]).all())


def test_flexlora_gives_a_small_client_the_best_approximation_at_its_rank() -> None:
    algo, _theta, trained, new = _ranked_round("flexlora", (1, 4), [2.0, 2.0])
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    assert trained[0][a].shape == (1, 6)
    mean = (trained[0][b] @ trained[0][a] + trained[1][b] @ trained[1][a]) / 2
    u, s, vh = torch.linalg.svd(mean.double())
    small = algo.client_view(new, 0)
    assert torch.allclose(
        (small[b] @ small[a]).double(), s[0] * torch.outer(u[:, 0], vh[0]), atol=1e-5
    )
