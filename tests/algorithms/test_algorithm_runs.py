"""Algorithms in real runs on the tiny model: what they train, send and log."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import refusal, refused, run_argv
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.runtime.client_store import SavedState

SCAFFOLD = ("--algorithm", "scaffold", "--optimizer", "sgd", "--set", "train.max_grad_norm=null")


def _run(model: Path, out: Path, *extra: str) -> list[dict]:
    assert main(run_argv(model, out, "--batch-size", "4", "--seed", "5", *extra)) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "global.safetensors")


def test_fedprox_with_mu_zero_is_fedavg(tiny_model_dir: Path, tmp_path: Path) -> None:
    _run(tiny_model_dir, tmp_path / "avg")
    _run(tiny_model_dir, tmp_path / "prox0", "--algorithm", "fedprox", "--set", "algorithm.mu=0")
    _run(tiny_model_dir, tmp_path / "prox", "--algorithm", "fedprox", "--set", "algorithm.mu=1")
    avg, prox0, prox = (_state(tmp_path / d) for d in ("avg", "prox0", "prox"))
    assert all(torch.equal(avg[k], prox0[k]) for k in avg)
    assert not all(torch.equal(avg[k], prox[k]) for k in avg)  # the term acts when mu > 0


def test_ffa_lora_freezes_a_sends_half_and_aggregates_exactly(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    lora = _run(tiny_model_dir, tmp_path / "lora")
    ffa = _run(tiny_model_dir, tmp_path / "ffa", "--algorithm", "ffa-lora")
    state = _state(tmp_path / "ffa")
    assert state and not any("lora_A" in k for k in state)
    b_and_head = sum(t.numel() for t in state.values())
    a_params = sum(t.numel() for k, t in _state(tmp_path / "lora").items() if "lora_A" in k)
    assert all(r["bytes_up"] == 2 * 4 * b_and_head for r in ffa)
    assert all(
        r["bytes_up"] - f["bytes_up"] == 2 * 4 * a_params for r, f in zip(lora, ffa, strict=True)
    )
    assert all(r["lora_aggregation_error"] < 1e-6 for r in ffa)
    assert lora[-1]["lora_aggregation_error"] > 1e-4  # separate averaging of B and A errs


def test_fedrs_is_a_hook_that_scales_the_logits_of_classes_a_client_lacks(tiny_config) -> None:
    from fedpet.algorithms import PlainTraining
    from fedpet.algorithms.fedrs import restricted
    from fedpet.experiment import prepare
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.state import extract

    plain = PlainTraining()
    assert restricted(plain, None, 2, np.array([0])) is plain  # FedRS off
    logits = torch.tensor([[2.0, 4.0], [-1.0, 1.0]])
    only_negative = restricted(plain, 0.25, 2, np.array([0, 0, 0]))
    assert torch.equal(only_negative.logits(logits), torch.tensor([[2.0, 1.0], [-1.0, 0.25]]))
    assert torch.equal(restricted(plain, 0.25, 2, np.array([1, 0])).logits(logits), logits)
    # in local training: alpha 1 changes nothing, bitwise; alpha 0 changes the update
    updates = []
    for alpha in (None, 1.0, 0.0):
        exp = prepare(
            tiny_config(
                **{
                    "algorithm.fedrs": alpha,
                    "data.partition": "shards",
                    "data.labels_per_client": 1,
                }
            )
        )
        half = ClientHalf.of(exp)
        updates.append(half.train(extract(exp.params), 1, 0, SavedState.of({})).update)
    assert all(torch.equal(updates[0][n], updates[1][n]) for n in updates[0])
    assert not all(torch.equal(updates[0][n], updates[2][n]) for n in updates[0])


def test_ffa_lora_needs_lora(capsys) -> None:
    err = refused(["run", "--dry-run", "--algorithm", "ffa-lora", "--method", "bitfit"], capsys)
    assert "method.name = 'bitfit' is not allowed: lora with algorithm ffa-lora" in err


def test_scaffold_sends_controls_both_ways_and_keeps_client_states_on_disk(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fedpet.runtime.client_store import DiskStore

    out = tmp_path / "scaffold"
    rows = _run(tiny_model_dir, out, *SCAFFOLD, "--rounds", "3")
    trainable = json.loads((out / "summary.json").read_text())["trainable_params"]
    # the model update and the control update up; the global state and c down
    assert all(r["bytes_up"] == r["bytes_down"] == 2 * 2 * 4 * trainable for r in rows)
    sampled = {k for r in rows for k in r["clients"]}
    files = sorted(p.name for p in (out / "clients").iterdir())
    assert {int(f.split("-r")[0]) for f in files} == sampled
    # at most two versions per client: the committed one and one saved after it
    assert all(sum(f.startswith(f"{k}-r") for f in files) <= 2 for k in sampled)
    server = load_file(out / "checkpoint" / "server.safetensors")
    assert sum(t.numel() for t in server.values()) == trainable  # c: one value per parameter
    assert any(float(t.abs().sum()) > 0 for t in server.values())
    # the server keeps the round of each client's committed state; loading it drops the rest
    committed = _committed(out)
    assert {k for k, _ in committed} == sampled
    store = DiskStore(out / "clients")
    for (k, r), state in committed.items():
        loaded = store.load(k, r)
        assert loaded is not None and all(torch.equal(loaded[n], state[n]) for n in state)
    assert sorted(p.name for p in (out / "clients").iterdir()) == sorted(
        f"{k}-r{r}.safetensors" for k, r in committed
    )
    assert store.load(0, 99) is None and store.load(1, 0) == {}  # gone; none yet


def test_scaffold_needs_plain_unclipped_sgd(capsys) -> None:
    err = refused(["run", "--dry-run", "--algorithm", "scaffold"], capsys)
    assert "train.optimizer = 'adamw' is not allowed: sgd with algorithm scaffold" in err
    err = refused(["run", "--dry-run", "--algorithm", "scaffold", "--optimizer", "sgd"], capsys)
    assert "train.max_grad_norm = 1.0 is not allowed: null with algorithm scaffold" in err
    assert main(["run", "--dry-run", *SCAFFOLD]) == 0


def _committed(out: Path) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Each client state the checkpoint names as committed, by (client, round)."""
    from fedpet.rundir import load_checkpoint

    rounds = load_checkpoint(out).state.get("client_rounds", {})
    return {
        (int(k), r): load_file(out / "clients" / f"{k}-r{r}.safetensors") for k, r in rounds.items()
    }


def test_rejected_updates_leave_every_client_control_at_zero(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rejected"
    rows = _run(tiny_model_dir, out, *SCAFFOLD, "--rounds", "3", "--max-update-norm", "1e-9")
    assert all(r["rejected"] and r["skipped"] for r in rows)  # every update is refused
    assert _committed(out) == {}  # no state was committed
    server = load_file(out / "checkpoint" / "server.safetensors")
    assert all(float(t.abs().max()) == 0.0 for t in server.values())


def test_only_clients_aggregated_in_a_round_keep_their_new_state(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fedpet.runtime.rounds import sample_cohort

    out = tmp_path / "retried"
    faults = ["--client-failure-rate", "0.5", "--min-clients-per-round", "3"]
    faults += ["--set", "federation.short_round=retry", "--set", "federation.max_retries=3"]
    sizes = ["--clients", "8", "--clients-per-round", "4", "--max-train-samples", "96"]
    rows = _run(tiny_model_dir, out, *SCAFFOLD, "--rounds", "3", *sizes, *faults)
    aggregated, abandoned = {}, {}
    for r in rows:
        last = r["attempts"] - 1
        lost = {(x["client"], x["attempt"]) for x in r["failed"] + r["rejected"]}
        aggregated[r["round"]] = (
            set() if r["skipped"] else {k for k in r["clients"] if (k, last) not in lost}
        )
        # clients that trained and uploaded in an attempt the server then abandoned
        abandoned[r["round"]] = {
            k
            for a in range(last + (1 if r["skipped"] else 0))
            for k in sample_cohort(5, r["round"], 8, 4, attempt=a).tolist()
            if (k, a) not in lost
        } - aggregated[r["round"]]
    assert any(abandoned.values()), (aggregated, abandoned)  # the case this test is about
    saved = _committed(out)
    assert saved and all(client in aggregated[round_] for client, round_ in saved), (
        sorted(saved),
        aggregated,
    )


@pytest.mark.parametrize("name", ["hetlora", "flexlora"])
def test_heterogeneous_ranks_cut_what_each_client_trains_and_sends(
    tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    from fedpet.runtime.rounds import sample_cohort

    out = tmp_path / name
    rows = _run(tiny_model_dir, out, "--algorithm", name, "--set", "algorithm.ranks=[2,8]")
    partition = json.loads((out / "partition.json").read_text())
    assert [c["lora_rank"] for c in partition["clients"]] == [2, 8, 2, 8]
    state = _state(out)
    lora = [t for k, t in state.items() if "lora_A" in k]
    assert lora and all(t.shape[0] == 8 for t in lora)  # the global state keeps the full rank
    per_rank = sum(t.shape[1] for t in lora) + sum(
        t.shape[0] for k, t in state.items() if "lora_B" in k
    )  # scalars per unit of rank
    head = sum(t.numel() for k, t in state.items() if "lora_" not in k)
    for r, row in enumerate(rows, start=1):
        cohort = sample_cohort(5, r, 4, 2).tolist()
        assert row["clients"] == cohort and row["aggregated"] == 2 and not row["rejected"]
        expected = sum(4 * (head + (2 if k % 2 == 0 else 8) * per_rank) for k in cohort)
        assert row["bytes_down"] == row["bytes_up"] == expected
        assert row["lora_aggregation_error"] is not None
    if name == "flexlora":  # the SVD factors: A's rows orthonormal
        assert all(torch.allclose(t @ t.T, torch.eye(8), atol=1e-4) for t in lora)


def test_a_client_trains_only_its_rank(tiny_config) -> None:
    from fedpet.experiment import prepare
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.state import extract

    exp = prepare(tiny_config(**{"algorithm.name": "hetlora", "algorithm.ranks": [3]}))
    half = ClientHalf.of(exp)
    received = half.algorithm.client_view(extract(exp.params), 0)
    update = half.train(received, 1, 0, SavedState.of({})).update
    assert update.keys() == received.keys()
    assert all(update[k].shape == t.shape for k, t in received.items())
    assert any(t.shape[0] == 3 for k, t in update.items() if "lora_A" in k)
    assert all(float(t.abs().sum()) > 0 for t in update.values())
    # the shared model's rows above rank 3 started and stayed zero: zero gradients there
    assert all(
        float(p.detach()[3:].abs().sum()) == 0 for k, p in exp.params.items() if "lora_A" in k
    )
    assert all(
        float(p.detach()[:, 3:].abs().sum()) == 0 for k, p in exp.params.items() if "lora_B" in k
    )


RANK_ERRORS = [
    (["--algorithm", "hetlora", "--set", "algorithm.ranks=[0,2]"],
     "algorithm.ranks = [0, 2] is not allowed: items each an integer >= 1"),
    (["--algorithm", "hetlora", "--set", "algorithm.ranks=[4,16]"],
     "algorithm.ranks = [4, 16] is not allowed: ranks from 1 to method.r = 8"),
    (["--algorithm", "flexlora", "--method", "adapter"],
     "method.name = 'adapter' is not allowed: lora with algorithm flexlora"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), RANK_ERRORS)
def test_heterogeneous_ranks_are_checked(args: list[str], message: str, capsys) -> None:
    assert message in refusal(args, capsys)


def test_codecs_count_their_payloads_and_keep_residuals_per_client(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file as load

    from fedpet.codecs import get_codec
    from fedpet.state import schema

    out = tmp_path / "topk"
    rows = _run(tiny_model_dir, out, "--codec-up", "topk:0.1+int8", "--codec-down", "fp16")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["codec_up"], summary["codec_down"]) == ("topk:0.1+int8", "fp16")
    state = _state(out)
    layout = schema(state)
    up = len(get_codec("topk:0.1+int8").encode(state))  # the size depends on shapes alone
    trainable = sum(t.numel() for t in state.values())
    assert up < trainable  # under one byte per trainable value
    assert all(r["bytes_up"] == 2 * up and r["bytes_down"] == 2 * 2 * trainable for r in rows)
    # error feedback (on by default with top-k): each sampled client's residual, on disk
    sampled = {k for r in rows for k in r["clients"]}
    files = {int(p.name.split("-r")[0]): p for p in sorted((out / "clients").iterdir())}
    assert set(files) == sampled
    residual = load(files[min(sampled)])
    assert {n.removeprefix("residual.") for n in residual} == {n for n, _ in layout}
    assert any(float(t.abs().sum()) > 0 for t in residual.values())


CODEC_ERRORS = [
    (["--codec-up", "int7"], "codec.up = 'int7' is not allowed: fp32, fp16, bf16, int8"),
    (["--codec-down", "topk:1.5"], "codec.down = 'topk:1.5' is not allowed: fp32, fp16"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CODEC_ERRORS)
def test_bad_codecs_are_refused_in_one_line(args: list[str], message: str, capsys) -> None:
    assert message in refusal(args, capsys)
