"""A federated LoRA decoder run keeps every guarantee: resume, Flower, algorithms, DP, codecs."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_argv
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.codecs import get_codec

GENERATE = ("--set", "data.objective=generate", "--seed", "3", "--quiet")
TIMING = {"train_seconds", "eval_seconds"}


def argv(model: Path, out: Path, *extra: str, rounds: int = 2) -> list[str]:
    return run_argv(model, out, *GENERATE, *extra, samples=32, rounds=rounds, eval_samples=8)


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def state(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "global.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_decoder_run_ends_bitwise_as_an_uninterrupted_one(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_decoder_dirs["llama"]
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    assert main(argv(model, resumed, rounds=2)) == 0
    assert main(["run", "--resume", str(resumed), "--rounds", "3", "--quiet"]) == 0
    assert main(argv(model, whole, rounds=3)) == 0
    assert same(state(resumed), state(whole)) and metrics(resumed) == metrics(whole)


ALGORITHMS = {
    "ffa-lora": ("--algorithm", "ffa-lora"),
    "hetlora": ("--algorithm", "hetlora", "--set", "algorithm.ranks=[2,8]"),
    "flexlora": ("--algorithm", "flexlora", "--set", "algorithm.ranks=[2,8]"),
    "codecs": ("--codec-up", "int8:row:sr", "--codec-down", "bf16"),
    "dp": ("--dp", "--dp-noise", "0.5", "--dp-clip", "0.1"),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_lora_aware_algorithms_codecs_and_dp_run_on_a_decoder_as_on_an_encoder(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    plain, out = tmp_path / "plain", tmp_path / name
    assert main(argv(tiny_decoder_dirs["gpt2"], plain)) == 0
    assert main(argv(tiny_decoder_dirs["gpt2"], out, *ALGORITHMS[name])) == 0
    base, rows, sent = metrics(plain), metrics(out), state(out)
    lora_bytes = base[0]["bytes_up"]  # two clients' fp32 LoRA matrices
    if name == "ffa-lora":  # A stays frozen and unsent: two clients' B matrices
        b_numel = sum(t.numel() for k, t in state(plain).items() if "lora_A" not in k)
        assert not any("lora_A" in k for k in sent)
        assert all(r["bytes_up"] == 2 * 4 * b_numel for r in rows)
    elif name in ("hetlora", "flexlora"):  # a rank-2 client sends a quarter of a rank-8 one
        assert all(lora_bytes // 4 <= r["bytes_up"] < lora_bytes for r in rows)
        assert any(r["bytes_up"] < lora_bytes for r in rows)
    elif name == "codecs":  # int8 rows with a scale per row up, bf16 down: as the codecs say
        up = sum(get_codec("int8:row:sr").values.nbytes(tuple(t.shape)) for t in sent.values())
        assert all(r["bytes_up"] == 2 * up < lora_bytes / 2 for r in rows)
        assert all(r["bytes_down"] == lora_bytes // 2 for r in rows)
    else:
        assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"]
    assert not same(sent, state(plain))


def test_dp_on_a_decoder_adds_noise_of_the_stated_std(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # one round, cohorts and clipping drawn alike (the run seed): the states differ by the
    # noise alone, std z C / m on the mean of m = 2 expected clients
    dp = ("--dp", "--dp-clip", "0.1", "--set", "privacy.reproducible=true")
    runs = {z: tmp_path / f"z{z}" for z in ("0", "0.5")}
    for z, out in runs.items():
        assert main(argv(tiny_decoder_dirs["gpt2"], out, *dp, "--dp-noise", z, rounds=1)) == 0
    clipped, noised = state(runs["0"]), state(runs["0.5"])
    noise = torch.cat([(noised[k] - clipped[k]).flatten() for k in noised])
    assert noise.numel() > 1000
    assert abs(float(noise.std()) / (0.5 * 0.1 / 2) - 1) < 0.1


@pytest.mark.integration
def test_flower_sim_equals_the_in_process_runtime_and_secure_aggregation_its_sum(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_decoder_dirs["gpt2"]
    flower, local = tmp_path / "flower", tmp_path / "local"
    assert main(argv(model, flower, "--runtime", "flower-sim")) == 0
    assert main(argv(model, local)) == 0
    assert same(state(flower), state(local)) and metrics(flower) == metrics(local)
    secure, plain = tmp_path / "secure", tmp_path / "plain"
    flags = ("--runtime", "flower-sim", "--secure-aggregation")
    assert main(argv(model, secure, *flags, rounds=1)) == 0
    assert main(argv(model, plain, rounds=1)) == 0
    a, b = state(secure), state(plain)
    # each update is clipped to +-8 and rounded to 2**22 levels before masking: the unmasked
    # mean of two clients is off by less than 2 x 16 / 2**22
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 2 * 16 / 2**22


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_clients_trained_together_end_as_one_at_a_time(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path, family: str
) -> None:
    # each client's mean loss over its own response tokens, from batched passes: GPT-2's
    # clients in a pass per batch width, Llama's in one pass a step
    model, one, four = tiny_decoder_dirs[family], tmp_path / "one", tmp_path / "four"
    assert main(argv(model, one, "--clients-per-round", "4")) == 0
    cost = {"gpt2": "0", "llama": "1000000000"}[family]
    flags = ("--clients-per-round", "4", "--set", "federation.parallel_clients=4")
    flags += ("--set", f"federation.pass_cost={cost}")
    assert main(argv(model, four, *flags)) == 0
    a, b = state(one), state(four)
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    assert diff**0.5 <= 1e-5 * sum(float((a[k] ** 2).sum()) for k in a) ** 0.5
    for row, other in zip(metrics(one), metrics(four), strict=True):
        assert row.keys() == other.keys()
        assert row["train_loss"] == pytest.approx(other["train_loss"], rel=1e-5)
