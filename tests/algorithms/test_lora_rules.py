"""The LoRA aggregation rules: what each trains and sends, and how exact its global model is."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import refusal, refused, run_argv
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.runtime.client_store import SavedState

# A and B of different sizes (intermediate.dense maps 32 -> 64), so bytes tell them apart
TARGETS = ("--set", "method.target_modules=[query,intermediate.dense]")
EXACT = ("ffa-lora", "rolora", "fedsvd", "fedex-lora", "flora")


def _run(model: Path, out: Path, *extra: str, rounds: int = 3) -> list[dict]:
    argv = run_argv(model, out, "--batch-size", "4", "--seed", "5", *TARGETS, *extra)
    assert main([*argv, "--rounds", str(rounds)]) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "global.safetensors")


def _values(state: dict[str, torch.Tensor], keep) -> int:
    return sum(t.numel() for k, t in state.items() if keep(k))


def test_dense_error_matches_the_formula() -> None:
    from fedpet.methods.lora import factor_pairs
    from fedpet.runtime.lora_error import LoraError

    gen = torch.Generator().manual_seed(3)
    a, b = "m.lora_A.weight", "m.lora_B.weight"

    def state() -> dict[str, torch.Tensor]:
        kind = {"generator": gen, "dtype": torch.float64}
        return {a: torch.randn(2, 5, **kind), b: torch.randn(4, 2, **kind)}

    before, after = state(), state()
    clients = [(state(), w) for w in (1.0, 3.0)]
    tracker = LoraError(factor_pairs([a, b]), frozen={}, scaling={b: 2.0})
    for trained, w in clients:
        tracker.add(trained, w)
    mean = sum(w / 4 * 2.0 * s[b] @ s[a] for s, w in clients)
    miss = torch.linalg.matrix_norm(mean - 2.0 * after[b] @ after[a])
    step = torch.linalg.matrix_norm(mean - 2.0 * before[b] @ before[a])
    error = tracker.dense_error(before, after)
    assert error is not None and abs(error - float(miss / step)) < 1e-9
    # the clients' weighted factors stacked (FLoRA's global model) score 0
    exact = {
        b: torch.cat([w / 4 * s[b] for s, w in clients], dim=1),
        a: torch.cat([s[a] for s, _ in clients], dim=0),
    }
    assert (tracker.dense_error(before, exact) or 1.0) < 1e-12
    assert LoraError(factor_pairs([a, b]), frozen={}).dense_error(before, after) is None


@pytest.mark.parametrize("name", ["fedavg", *EXACT])
def test_the_aggregation_error_is_zero_for_exact_rules_only(
    tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    rows = _run(tiny_model_dir, tmp_path / name, "--algorithm", name)
    errors = [r["aggregation_error"] for r in rows]
    if name in EXACT:
        assert all(e <= 1e-5 for e in errors), errors
    else:
        assert all(e > 1e-3 for e in errors), errors


def test_rolora_sends_the_factor_each_round_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = _run(tiny_model_dir, tmp_path / "rolora", "--algorithm", "rolora")
    state = _state(tmp_path / "rolora")

    def sent(factor: str) -> int:
        return 4 * _values(state, lambda k: factor in k or "lora_" not in k)

    assert sent("lora_A") != sent("lora_B")
    for row in rows:  # two clients a round, fp32: 4 bytes a value
        factor = "lora_B" if row["round"] % 2 else "lora_A"
        assert row["bytes_up"] == 2 * sent(factor)
        assert row["bytes_down"] == 2 * 4 * _values(state, lambda k: True)
    # round 2 moved the A factors and the head, and left every B as round 1 made it
    _run(tiny_model_dir, tmp_path / "one", "--algorithm", "rolora", rounds=1)
    _run(tiny_model_dir, tmp_path / "two", "--algorithm", "rolora", rounds=2)
    one, two = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert all(torch.equal(one[k], two[k]) == ("lora_B" in k) for k in one)


def test_a_client_holds_the_factor_it_does_not_train_fixed(tiny_config) -> None:
    from fedpet.experiment import prepare
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.state import extract

    exp = prepare(tiny_config(**{"algorithm.name": "rolora"}))
    half = ClientHalf.of(exp)
    received = extract(exp.params)
    for round_, trained, fixed in ((1, "lora_B", "lora_A"), (2, "lora_A", "lora_B")):
        update = half.train(received, round_, 0, SavedState.of({})).update
        assert update.keys() == {k for k in received if fixed not in k}
        assert any(trained in k for k in update)
        held = {k: p.detach() for k, p in exp.params.items() if fixed in k}
        assert all(torch.equal(t, received[k]) for k, t in held.items())  # never stepped
        assert all(p.requires_grad for p in exp.params.values())  # and trainable again


def test_fedsvd_sends_b_up_and_a_new_orthonormal_a_down(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = _run(tiny_model_dir, tmp_path / "svd", "--algorithm", "fedsvd", rounds=1)
    state = _state(tmp_path / "svd")
    assert rows[0]["bytes_up"] == 2 * 4 * _values(state, lambda k: "lora_A" not in k)
    assert rows[0]["bytes_down"] == 2 * 4 * _values(state, lambda k: True)
    downs = [t for k, t in state.items() if "lora_A" in k]
    assert downs and all(torch.allclose(t @ t.T, torch.eye(8), atol=1e-5) for t in downs)
    # clients trained B on the shared initial A, as FFA-LoRA's do: the same product B A
    _run(tiny_model_dir, tmp_path / "ffa", "--algorithm", "ffa-lora", rounds=1)
    ffa = _state(tmp_path / "ffa")
    from fedpet.methods.lora import factor_pairs

    init = _initial_downs(tiny_model_dir, tmp_path)
    for a, b in factor_pairs(state):
        product = state[b] @ state[a]
        assert torch.allclose(product, ffa[b] @ init[a], atol=1e-6)
        assert not torch.allclose(state[a], init[a])


def _initial_downs(model: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The A factors LoRA starts from with seed 5 (FFA-LoRA keeps them all along)."""
    from fedpet.configure import build_config, resolve
    from fedpet.experiment import prepare

    base = {"model": str(model), "out": str(tmp_path / "init"), "seed": 5}
    targets = ["query", "intermediate.dense"]
    cfg = resolve(build_config(base, [("method.target_modules", targets)]))
    params = prepare(cfg).model.named_parameters()
    return {n: p.detach().clone() for n, p in params if "lora_A" in n}


def test_fedex_lora_merges_each_residual_and_sends_the_correction_down(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = _run(tiny_model_dir, tmp_path / "fedex", "--algorithm", "fedex-lora")
    state = _state(tmp_path / "fedex")
    merged = {k: t for k, t in state.items() if k.endswith("@merged")}
    ups = [k for k in state if "lora_B" in k and k not in merged]
    assert sorted(merged) == sorted(f"{b}@merged" for b in ups)
    from fedpet.methods.lora import down_factor

    # each correction has the module's shape: B's rows by A's columns
    assert all(merged[f"{b}@merged"].shape == (state[b].shape[0], state[down_factor(b)].shape[1])
               for b in ups)  # fmt: skip
    trainable = 4 * _values(state, lambda k: k not in merged)
    dense = 4 * _values(merged, lambda k: True)
    for row in rows:  # two clients a round; the correction exists from round 2
        assert row["bytes_up"] == 2 * trainable
        assert row["bytes_down"] == 2 * (trainable + (dense if row["round"] > 1 else 0))
    assert all(float(t.abs().sum()) > 0 for t in merged.values())


@pytest.mark.parametrize("ranks", [None, [2, 8]], ids=["full-rank", "ranks-2-8"])
def test_flora_sends_stacks_to_clients_in_step_and_the_whole_merge_to_the_rest(
    tiny_model_dir: Path, tmp_path: Path, ranks: list[int] | None
) -> None:
    out = tmp_path / "flora"
    extra = () if ranks is None else ("--set", f"algorithm.ranks={ranks}")
    rows = _run(tiny_model_dir, out, "--algorithm", "flora", *extra, rounds=4)
    state = _state(out)
    merged = {k: t for k, t in state.items() if k.endswith("@merged")}
    stacks = {k: t for k, t in state.items() if k.endswith("@stack")}
    lora = {k: t for k, t in state.items() if "@" not in k}
    assert merged and len(stacks) == 2 * len(merged)
    # LoRA starts afresh each round: B zero (A at its initialisation)
    assert all(float(t.abs().sum()) == 0 for k, t in lora.items() if "lora_B" in k)

    def rank(k: int) -> int:
        return 8 if ranks is None else ranks[k % 2]

    # the stacked rank of a round: the sum of its clients' ranks (the last round's, here)
    stacked = {t.shape[1] for k, t in stacks.items() if "lora_B" in k}
    assert stacked == {sum(rank(k) for k in rows[-1]["clients"])}
    per_rank = 4 * sum(t.shape[0] for k, t in stacks.items() if "lora_B" in k) + 4 * sum(
        t.shape[1] for k, t in stacks.items() if "lora_A" in k
    )  # bytes of one unit of stacked rank, over the modules
    dense = 4 * _values(merged, lambda k: True)
    head = 4 * _values(lora, lambda k: "lora_" not in k)
    per_unit = 4 * _values(lora, lambda k: "lora_" in k) // 8  # LoRA's bytes a unit of rank
    in_step = 0
    for before, row in zip([None, *rows], rows, strict=False):
        start = sum(head + per_unit * rank(k) for k in row["clients"])  # LoRA's start and head
        catch_up = 0
        for k in row["clients"] if before is not None else ():
            if k in before["clients"]:  # aggregated the round before: the last stacks
                catch_up += per_rank * sum(rank(j) for j in before["clients"])
                in_step += 1
            else:
                catch_up += dense
        assert row["bytes_down"] == start + catch_up, row["round"]
        assert row["bytes_up"] == sum(per_unit * rank(k) + head for k in row["clients"])
    assert in_step and per_rank * 16 != dense  # both kinds of download were counted
    # a client in step merged the stacks into the merge it keeps: the server's, to rounding
    last, previous = rows[-1]["clients"], rows[-2]["clients"]
    for k in set(last) & set(previous):
        held = SavedState.of(load_file(out / "clients" / f"{k}-r4.safetensors")).algorithm
        for b, c in merged.items():
            up = b.removesuffix("@merged")
            before_last = c - stacks[up + "@stack"] @ stacks[_down(up) + "@stack"]
            assert torch.allclose(held[b], before_last, atol=1e-6)


def _down(up: str) -> str:
    from fedpet.methods.lora import down_factor

    return down_factor(up)


def test_base_weights_take_the_correction_and_give_it_back(tiny_config) -> None:
    from fedpet.experiment import prepare
    from fedpet.methods.lora import adapted_module, factor_pairs, merged_name
    from fedpet.runtime.client_half import ClientHalf
    from fedpet.state import extract

    exp = prepare(tiny_config(**{"algorithm.name": "fedex-lora", "method.lora_alpha": 4}))
    _, up = factor_pairs(exp.params)[0]
    layer = exp.model.get_submodule(adapted_module(up)[0])
    weight = layer.get_base_layer().weight
    loaded = weight.detach().clone()
    correction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    received = {**extract(exp.params), merged_name(up): correction}
    # a client merges the correction it receives: W0 + s C, with s = 4 / 8
    ClientHalf.of(exp).train(received, 2, 0, SavedState.of({}))
    assert torch.allclose(weight.detach(), loaded + 0.5 * correction, atol=1e-6)
    exp.load_state(extract(exp.params))  # a state without it: the loaded weight, bitwise
    assert torch.equal(weight.detach(), loaded)


@pytest.mark.parametrize("name", ["rolora", "fedsvd", "fedex-lora", "flora"])
def test_the_lora_rules_need_lora(name: str, capsys) -> None:
    err = refusal(["--algorithm", name, "--method", "bitfit"], capsys)
    assert f"method.name = 'bitfit' is not allowed: lora with algorithm {name}" in err


@pytest.mark.parametrize(
    ("flags", "allowed"),
    [
        (("--dp", "--dp-noise", "1"), "one of fedavg"),
        (("--runtime", "flower-sim", "--secure-aggregation"), "with secagg.enabled"),
    ],
    ids=["dp", "secure-aggregation"],
)
def test_rules_that_need_single_updates_are_refused_dp_and_secure_sums(
    flags: tuple[str, ...], allowed: str, capsys
) -> None:
    for exact in ("fedex-lora", "flora"):  # each client's own factors
        err = refusal(["--algorithm", exact, *flags], capsys)
        assert f"algorithm.name = '{exact}' is not allowed: {allowed}" in err
    for linear in ("rolora", "fedsvd", "ffa-lora"):  # a sum of the updates is all they need
        assert main(["run", "--dry-run", "--algorithm", linear, *flags]) == 0


def test_a_linear_rule_runs_under_dp(tiny_model_dir: Path, tmp_path: Path) -> None:
    dp = ("--dp", "--dp-noise", "0.5", "--dp-clip", "0.1", "--algorithm", "rolora")
    rows = _run(tiny_model_dir, tmp_path / "dp", *dp, rounds=2)
    state = _state(tmp_path / "dp")
    assert rows[-1]["epsilon"] > rows[0]["epsilon"] > 0
    assert all("aggregation_error" not in r for r in rows)  # no single update is reported
    assert state.keys() == _state_keys(tiny_model_dir, tmp_path)


def _state_keys(model: Path, tmp_path: Path) -> set[str]:
    _run(model, tmp_path / "plain", "--algorithm", "rolora", rounds=1)
    return set(_state(tmp_path / "plain"))


def _factors(gen: torch.Generator, rank: int = 4) -> dict[str, torch.Tensor]:
    return {
        "m.lora_A.weight": torch.randn(rank, 5, generator=gen, dtype=torch.float64),
        "m.lora_B.weight": torch.randn(3, rank, generator=gen, dtype=torch.float64),
        "head.weight": torch.randn(2, generator=gen, dtype=torch.float64),
    }


@pytest.mark.parametrize("weighting", ["norm", "examples"])
def test_hetlora_weighs_clients_by_the_norm_of_their_product_or_their_examples(
    weighting: str,
) -> None:
    from fedpet.algorithms import Aggregate, make_algorithm

    gen = torch.Generator().manual_seed(4)
    hetlora = make_algorithm("hetlora", ranks=(2, 4), weighting=weighting)
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    sent = _factors(gen)
    aggregate = Aggregate(keep_updates=hetlora.keeps_updates)
    clients = {0: 10.0, 1: 30.0}  # client 0 of rank 2, client 1 of rank 4
    deltas = {}
    for k, examples in clients.items():
        view = hetlora.client_view(sent, k)
        deltas[k] = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in view.items()}
        aggregate.add(hetlora.server_view(sent, deltas[k], k), examples)
    new, _ = hetlora.server_update(sent, {}, aggregate)
    if weighting == "norm":
        norms = []
        for k in clients:
            view = hetlora.client_view(sent, k)
            product = (view[b] + deltas[k][b]) @ (view[a] + deltas[k][a])
            norms.append(float(torch.linalg.matrix_norm(product)))
        p = [n / sum(norms) for n in norms]
    else:
        p = [w / sum(clients.values()) for w in clients.values()]
    for name, t in sent.items():
        padded = [torch.zeros_like(t) for _ in clients]
        for pk, k in zip(padded, clients, strict=True):
            pk[tuple(slice(0, n) for n in deltas[k][name].shape)] = deltas[k][name]
        expected = t + sum(w * d for w, d in zip(p, padded, strict=True))
        assert torch.allclose(new[name], expected), name


def test_hetlora_self_pruning_regularises_the_tail_and_cuts_the_rank() -> None:
    from fedpet.algorithms import make_algorithm
    from fedpet.algorithms.hetlora import RANK, TailRegulariser

    gen = torch.Generator().manual_seed(5)
    hetlora = make_algorithm("hetlora", prune_gamma=0.5, prune_lambda=2.0)
    a, b = "m.lora_A.weight", "m.lora_B.weight"
    received = _factors(gen)
    hook = hetlora.client_hook(received, {})
    assert isinstance(hook, TailRegulariser) and (hook.rank, hook.gamma) == (4, 0.5)
    params = {n: torch.nn.Parameter(t) for n, t in received.items()}
    tail = torch.linalg.matrix_norm(received[b][:, 2:]) * torch.linalg.matrix_norm(received[a][2:])
    assert torch.allclose(hook.loss(torch.tensor(1.0, dtype=torch.float64), params), 1 + 2 * tail)
    # the tail shrank in training: rank 4 -> floor(0.5 * 4) = 2, the tail taken to zero
    shrunk = {**received, a: received[a] * torch.tensor([[1.0], [1.0], [0.5], [0.5]])}
    update, state = hetlora.client_update(received, shrunk, {}, 1, {}, 8)
    assert int(state[RANK]) == 2
    assert torch.equal((received[a] + update[a])[2:], torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(update[a][:2], torch.zeros(2, 5, dtype=torch.float64))
    # it grew: the rank stays; a pruned client starts its tail at zero
    grown = {**received, b: received[b] * 2}
    assert int(hetlora.client_update(received, grown, {}, 1, {}, 8)[1][RANK]) == 4
    start = hetlora.local_start(received, {RANK: torch.tensor(2)})
    assert float(start[b][:, 2:].abs().sum()) == 0 and torch.equal(
        start[b][:, :2], received[b][:, :2]
    )


def test_hetlora_clients_prune_their_ranks_in_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from fedpet.algorithms.hetlora import RANK

    prune = ("--set", "algorithm.prune_gamma=0.75", "--set", "algorithm.prune_lambda=1")
    out = tmp_path / "hetlora"
    rows = _run(
        tiny_model_dir,
        out,
        "--algorithm",
        "hetlora",
        "--set",
        "algorithm.ranks=[4,8]",
        *prune,
        rounds=4,
    )
    ranks = {
        int(p.name.split("-")[0]): int(load_file(p)[RANK]) for p in (out / "clients").glob("*")
    }
    assert ranks and all(r <= (4 if k % 2 == 0 else 8) for k, r in ranks.items())
    assert any(r < (4 if k % 2 == 0 else 8) for k, r in ranks.items())  # some pruned
    assert all(r["aggregation_error"] > 0 for r in rows)


SB = ("--method", "lora-sb")


def test_lora_sb_sends_r_squared_per_module_and_aggregates_exactly(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = _run(tiny_model_dir, tmp_path / "sb", *SB, "--set", "method.r=4")
    state = _state(tmp_path / "sb")
    middles = [t for k, t in state.items() if k.endswith("lora_sb_R")]
    assert len(middles) == 4 and all(t.shape == (4, 4) for t in middles)  # 2 layers x 2
    head = _values(state, lambda k: "lora_sb" not in k)
    assert all(r["bytes_up"] == r["bytes_down"] == 2 * 4 * (4 * 4**2 + head) for r in rows)
    assert all(r["aggregation_error"] <= 1e-5 for r in rows)
    assert all(float(t.abs().sum()) > 0 for t in middles)


def test_lora_sb_factors_are_the_top_singular_vectors_of_the_first_gradient(
    tiny_config,
) -> None:
    from fedpet.client import batch_loss
    from fedpet.data.batching import collate
    from fedpet.experiment import INIT_EXAMPLES, prepare
    from fedpet.methods.lora_sb import SbLinear

    exp = prepare(tiny_config(**{"method.name": "lora-sb", "method.r": 3}))
    layers = {n: m for n, m in exp.model.named_modules() if isinstance(m, SbLinear)}
    assert len(layers) == 4  # query and value of 2 layers
    # the same classifier fully trainable: the gradient full fine-tuning's first step takes
    full = prepare(tiny_config(**{"method.name": "full"}))
    full.model.eval()
    batch = collate(full.validation, np.arange(INIT_EXAMPLES))
    from fedpet.algorithms import PlainTraining

    batch_loss(full.model, batch, PlainTraining()).backward()
    weights = dict(full.model.named_parameters())
    for name, layer in layers.items():
        grad = weights[f"{name}.weight"].grad
        u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
        b, a = layer.lora_sb_B.double(), layer.lora_sb_A.double()
        assert torch.allclose(b.T @ b, torch.eye(3, dtype=torch.float64), atol=1e-5)
        # the same directions, up to each one's sign
        assert torch.allclose((b.T @ u[:, :3]).abs(), torch.eye(3, dtype=torch.float64), atol=1e-3)
        assert torch.allclose((a @ vh[:3].T).abs(), torch.eye(3, dtype=torch.float64), atol=1e-3)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in exp.params.items() if "sb_R" in n)


def test_lora_sb_refuses_targets_it_cannot_adapt(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    nowhere = ("--set", "method.target_modules=[nowhere]")
    err = refused(run_argv(tiny_model_dir, tmp_path / "x", *SB, *nowhere), capsys)
    assert "method.target_modules = ['nowhere'] is not allowed" in err


def test_svd_factors_are_laid_out_as_a_checkpoint_reads_them_back() -> None:
    from fedpet.algorithms.flexlora import best_rank

    # LAPACK's V^T is column-major: a cut of it, kept as is, would round differently in
    # later arithmetic than the same values read back from a checkpoint (a resume)
    up, down = best_rank(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), 2)
    assert up.is_contiguous() and down.is_contiguous()
