"""One client, full participation, one local epoch == centralized training for one epoch."""

from pathlib import Path

import torch

from fedpet.algorithms import PlainTraining
from fedpet.experiment import prepare
from fedpet.rundir import RunDir
from fedpet.runtime.centralized import run_centralized
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.simulation import run_simulation
from fedpet.state import extract


def final_state(cfg, out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    exp = prepare(cfg)
    initial = extract(exp.params)
    run = RunDir(out)
    run.create(overwrite=False)
    recorder = Recorder(exp, run)
    (run_centralized if cfg.centralized else run_simulation)(exp, recorder)
    return initial, extract(exp.params)


def test_one_client_federation_equals_centralized_epoch(tiny_config, tmp_path: Path) -> None:
    common = {"train.dropout": 0.0, "seed": 5, "method.name": "lora", "train.lr": 5e-3}
    fed_cfg = tiny_config(**common, **{"federation.clients": 1, "federation.clients_per_round": 1})
    cen_cfg = tiny_config(**common, centralized=True, **{"train.epochs": 1})
    init_f, fed = final_state(fed_cfg, tmp_path / "fed")
    init_c, cen = final_state(cen_cfg, tmp_path / "cen")
    assert all(torch.equal(init_f[k], init_c[k]) for k in init_f)
    moved = max((fed[k] - init_f[k]).abs().max().item() for k in fed)
    assert moved > 1e-3  # training really happened
    for k in fed:
        torch.testing.assert_close(fed[k], cen[k], atol=1e-6, rtol=0)


def test_different_data_order_gives_a_different_state(tiny_config, tmp_path: Path) -> None:
    common = {"train.dropout": 0.0, "method.name": "lora", "train.lr": 5e-3, "centralized": True}
    _, a = final_state(tiny_config(**common, seed=1), tmp_path / "a")
    _, b = final_state(tiny_config(**common, **{"seed": 1, "train.batch_size": 4}), tmp_path / "b")
    assert any(not torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_simulation_round_is_the_example_weighted_mean_of_local_results(
    tiny_config, tmp_path: Path
) -> None:
    """Recompute one round by hand: each client trained alone, then sum_k n_k delta_k / n."""
    from fedpet.seeding import derive_seed
    from fedpet.state import load_

    cfg = tiny_config(
        **{
            "train.dropout": 0.0,
            "train.lr": 5e-3,
            "data.max_train_samples": 25,
            "federation.clients": 2,
            "federation.clients_per_round": 2,
        }
    )
    exp = prepare(cfg)
    theta = extract(exp.params)
    sizes = [len(c) for c in exp.clients]
    assert sizes == [13, 12]
    deltas = []
    for k in range(2):
        result = exp.train_client(k, theta, PlainTraining(), derive_seed(cfg.seed, "train", 1, k))
        deltas.append({n: result.state[n] - theta[n] for n in theta})
    expected = {n: theta[n] + (13 * deltas[0][n] + 12 * deltas[1][n]) / 25 for n in theta}

    load_(exp.params, theta)
    run = RunDir(tmp_path / "run")
    run.create(overwrite=False)
    run_simulation(exp, Recorder(exp, run))
    got = extract(exp.params)
    for n in theta:
        torch.testing.assert_close(got[n], expected[n], atol=1e-6, rtol=0)
    unweighted = {n: theta[n] + (deltas[0][n] + deltas[1][n]) / 2 for n in theta}
    assert any(not torch.allclose(got[n], unweighted[n], atol=1e-7) for n in theta)
