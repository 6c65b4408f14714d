"""Personal tensors stay with their clients: never sent, trained only by their own client."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedpet.experiment import prepare
from fedpet.launch import start_run
from fedpet.methods.lora import lora_factor
from fedpet.runtime.client_half import ClientHalf
from fedpet.runtime.client_store import DiskStore, SavedState
from fedpet.runtime.payloads import Download
from fedpet.state import extract, schema

SMALL = {
    "train.dropout": 0.0,
    "train.lr": 5e-3,
    "federation.clients": 4,
    "federation.clients_per_round": 2,
    "federation.rounds": 3,
    "data.client_test_fraction": 0.25,
}


def run(cfg, out: Path) -> dict:
    """A whole run of ``cfg`` into ``out``; its summary."""
    return start_run(cfg, out, watchers=[])


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def saved(out: Path, client: int) -> SavedState:
    """``client``'s last saved state in a simulation's run directory (empty if none)."""
    files = sorted((out / "clients").glob(f"{client}-r*.safetensors"))
    return SavedState.of(load_file(files[-1]) if files else {})


@pytest.mark.parametrize("algorithm", ["fedsa-lora", "fedper", "local", "fedavg"])
def test_each_round_sends_exactly_the_shared_tensors(tiny_config, tmp_path, algorithm) -> None:
    cfg = tiny_config(**{**SMALL, "algorithm.name": algorithm, "method.name": "lora"})
    exp = prepare(cfg)
    heads = exp.head_names
    shared = {
        "fedsa-lora": lambda n: lora_factor(n) != "B",
        "fedper": lambda n: n not in heads,
        "local": lambda n: False,
        "fedavg": lambda n: True,
    }[algorithm]
    values = sum(p.numel() for n, p in exp.params.items() if shared(n))
    if algorithm == "fedsa-lora":  # the A factors and the head, nothing else
        a = sum(p.numel() for n, p in exp.params.items() if lora_factor(n) == "A")
        assert values == a + sum(p.numel() for n, p in exp.params.items() if n in heads)
    summary = run(cfg, tmp_path / "run")
    sends = sum(r["aggregated"] for r in metrics(tmp_path / "run"))
    assert sends == 3 * 2
    assert summary["bytes_up_total"] == summary["bytes_down_total"] == 4 * values * sends
    personal = [saved(tmp_path / "run", k).personal for k in range(4)]
    if algorithm == "fedavg":
        assert not any(personal) and "personal_test_mean" not in summary
    else:
        kept = {n for p in personal for n in p}
        assert kept == {n for n in exp.params if not shared(n)}
        assert "personal_test_mean" in summary


def test_a_clients_personal_tensors_are_its_own_rounds_replayed_alone(
    tiny_config, tmp_path
) -> None:
    """Replay client k's downloads through a fresh client half and store: same B factors.

    In the simulation one model serves every client: nothing of another client's training
    may leak into k's personal tensors.
    """
    cfg = tiny_config(**{**SMALL, "algorithm.name": "fedsa-lora", "federation.rounds": 4})
    out = tmp_path / "run"
    exp = prepare(cfg)
    from fedpet.rundir import RunDir
    from fedpet.runtime.recorder import Recorder
    from fedpet.runtime.server_half import ServerHalf
    from fedpet.runtime.simulation import run_attempt

    run_dir = RunDir(out)
    run_dir.create(overwrite=False)
    server = ServerHalf(exp, Recorder(exp, run_dir))
    half = ClientHalf.of(exp)
    store = DiskStore(out / "clients")
    downloads: dict[int, list[tuple[int, Download]]] = {}
    for rnd in server.rounds():
        intake = run_attempt(server, half, store, rnd, 0)
        for k in intake.clients:
            downloads.setdefault(k, []).append((rnd, intake.download(k, count=False)))
        server.close(rnd, [intake])
    k = max(downloads, key=lambda c: len(downloads[c]))
    assert len(downloads[k]) >= 2  # sampled again: it continued from its own B
    replay = ClientHalf.of(prepare(cfg))
    alone = DiskStore(tmp_path / "alone")
    for rnd, download in downloads[k]:
        replay.run(download, rnd, k, alone)
    last = downloads[k][-1][0]
    mine = SavedState.of(load_file(out / "clients" / f"{k}-r{last}.safetensors")).personal
    again = SavedState.of(load_file(tmp_path / "alone" / f"{k}-r{last}.safetensors")).personal
    assert mine.keys() == again.keys() and mine
    assert all(torch.equal(mine[n], again[n]) for n in mine)
    initial = exp.personal
    assert all(lora_factor(n) == "B" and not initial[n].any() for n in initial)  # zero init
    assert any(mine[n].abs().max() > 0 for n in mine)


def test_ditto_with_a_pull_that_undoes_each_step_keeps_the_personal_copy_at_the_global(
    tiny_config, tmp_path
) -> None:
    """With SGD at rate lr, a pull of 1 / lr sets each step back to the received state.

    Each step leaves the copy at ``w - lr * g``, one step's size from the global; without the
    pull the copy trains away from it, step after step.
    """
    gaps = {}
    for lam in (0.0, 100.0):
        cfg = tiny_config(
            **{
                **SMALL,
                "algorithm.name": "ditto",
                "algorithm.lam": lam,
                "train.optimizer": "sgd",
                "train.lr": 0.01,
                "train.head_lr": 0.01,
                "train.max_grad_norm": None,
                "federation.rounds": 1,
                "train.local_epochs": 8,
            },
        )
        half = ClientHalf.of(prepare(cfg))
        received = extract(half.exp.params)
        download = Download(half.down.encode(received), schema(received))
        half.run(download, 1, 0, DiskStore(tmp_path / str(lam)))
        copy = SavedState.of(load_file(tmp_path / str(lam) / "0-r1.safetensors")).personal
        assert copy.keys() == received.keys()
        gaps[lam] = max((copy[n] - received[n]).abs().max().item() for n in copy)
    assert gaps[100.0] < 0.01 and gaps[100.0] < gaps[0.0] / 4, gaps


def test_local_with_one_client_is_centralized_training(tiny_config, tmp_path) -> None:
    common = {"train.dropout": 0.0, "seed": 5, "method.name": "lora", "train.lr": 5e-3}
    cfg = tiny_config(
        **common,
        **{"federation.clients": 1, "federation.clients_per_round": 1, "algorithm.name": "local"},
    )
    summary = run(cfg, tmp_path / "local")
    assert summary["bytes_up_total"] == summary["bytes_down_total"] == 0
    mine = saved(tmp_path / "local", 0).personal
    run(tiny_config(**common, centralized=True, **{"train.epochs": 1}), tmp_path / "cen")
    central = load_file(tmp_path / "cen" / "checkpoint" / "global.safetensors")
    assert mine.keys() == central.keys()
    for n in mine:
        torch.testing.assert_close(mine[n], central[n], atol=1e-6, rtol=0)
    initial = extract(prepare(cfg).params)
    assert max((mine[n] - initial[n]).abs().max().item() for n in mine) > 1e-3


def test_client_test_figures_are_numpys_over_clients_csv(tiny_config, tmp_path) -> None:
    cfg = tiny_config(**{**SMALL, "algorithm.name": "fedper", "federation.clients": 6})
    summary = run(cfg, tmp_path / "run")
    with (tmp_path / "run" / "clients.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["client"]) for r in rows] == list(range(6))  # sampled or not
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    for row, client in zip(rows, partition["clients"], strict=True):
        assert int(row["test_examples"]) == client["test_size"] == len(client["test_examples"])
        assert row["test_label_counts"].split() == [str(c) for c in client["test_label_counts"]]
    for model, key in (("global", "client_test"), ("personal", "personal_test")):
        values = np.array([float(r[f"{model}_accuracy"]) for r in rows])
        assert summary[f"{key}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert summary[f"{key}_p10"] == pytest.approx(np.percentile(values, 10), abs=1e-12)
        assert summary[f"{key}_worst"] == values.min()
    last = metrics(tmp_path / "run")[-1]
    assert last["client_test_mean"] == summary["client_test_mean"]
    never = set(range(6)) - {k for r in metrics(tmp_path / "run") for k in r["clients"]}
    for k in never:  # it starts from the global state: its own model is the global one
        assert rows[k]["personal_accuracy"] == rows[k]["global_accuracy"]


def test_a_centralized_run_scores_its_one_clients_local_test_split(tiny_config, tmp_path) -> None:
    cfg = tiny_config(**{"centralized": True, "train.epochs": 1, "data.client_test_fraction": 0.25})
    summary = run(cfg, tmp_path / "cen")
    rows = (tmp_path / "cen" / "clients.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("0,48,16,")  # 64 examples, a quarter held out
    assert summary["client_test_worst"] == summary["client_test_mean"]
    assert "personal_test_mean" not in summary
