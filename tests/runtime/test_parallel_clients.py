"""A round's clients trained together (``federation.parallel_clients``) end as one by one."""

import json
from pathlib import Path

import pytest
import torch
from helpers import refused, run_argv
from safetensors.torch import load_file
from torch import nn

from fedpet.api import MethodBase, register_method
from fedpet.cli import main
from fedpet.methods import METHODS

TIMING = {"train_seconds", "eval_seconds"}

# 8 clients of unequal sizes (the quantity partition), 5 per round, two local epochs: the
# smaller clients leave the stack first; dropout on (the tiny BERT's 0.1)
SHAPE = ("--set", "data.partition=quantity", "--set", "data.min_client_size=4")
SHAPE += ("--set", "train.local_epochs=2")
CASES = {
    "lora": (),
    # every step one pass (the others: a pass per batch width, the most passes)
    "one-pass": ("--set", "federation.pass_cost=1000000000"),
    "fedprox": ("--algorithm", "fedprox", "--set", "algorithm.mu=0.5"),
    "scaffold": (
        "--algorithm", "scaffold", "--optimizer", "sgd", "--set", "train.max_grad_norm=null",
    ),
    # DP: each client's update clipped (and under distributed noise, noised) by its stage
    "dp": ("--dp", "--dp-noise", "0.5", "--dp-clip", "0.05", "--set", "privacy.reproducible=true"),
    "distributed-dp": (
        "--dp", "--dp-noise", "0.5", "--dp-clip", "0.05", "--set", "privacy.noise=distributed",
        "--set", "privacy.sampling=fixed", "--set", "privacy.reproducible=true",
    ),
    # crashes drop a client from its cohort; error feedback's residuals and FedSA-LoRA's
    # personal B factors in the clients' states; Ditto's own copies; a factor held fixed
    "faults": ("--client-failure-rate", "0.3"),
    "fedsa-lora": ("--algorithm", "fedsa-lora", "--set", "data.client_test_fraction=0.25"),
    "ditto": ("--algorithm", "ditto", "--set", "data.client_test_fraction=0.25"),
    "rolora": ("--algorithm", "rolora"),
    "fedex-lora": ("--algorithm", "fedex-lora"),
    **{m: ("--method", m) for m in ("adapter", "prefix", "prompt", "ia3", "bitfit", "lora-sb")},
}  # fmt: skip


# lossy steps after local training, and bf16 autocast, each with the bound its rounding
# allows: where fp32 reordering carries a value across an int8 rounding boundary, that
# element moves one step (error feedback carries the difference on); bf16 keeps 8 bits
LOSSY = {
    "int8-error-feedback": (
        ("--codec-up", "int8:row", "--codec-down", "fp16", "--set", "codec.error_feedback=true"),
        1e-4,
    ),
    "bf16": (("--set", "train.precision=bf16"), 5e-3),
}


def _run(model: Path, out: Path, parallel: str, flags: tuple[str, ...]) -> None:
    argv = run_argv(
        model, out, *SHAPE, *flags, "--set", f"federation.parallel_clients={parallel}",
        samples=96, clients=8, per_round=5,
    )  # fmt: skip
    assert main(argv) == 0


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over the whole state."""
    assert a.keys() == b.keys()
    diff = sum(float(((a[n] - b[n]) ** 2).sum()) for n in a)
    return (diff / sum(float((a[n] ** 2).sum()) for n in a)) ** 0.5


def _states(model: Path, tmp_path: Path, flags: tuple[str, ...]) -> tuple[dict, dict]:
    one, five = tmp_path / "one", tmp_path / "five"
    _run(model, one, "1", flags)
    _run(model, five, "5", ("--set", "federation.pass_cost=0", *flags))
    assert "parallel_clients: '5'" in (five / "config.yaml").read_text()
    return (
        load_file(one / "checkpoint" / "global.safetensors"),
        load_file(five / "checkpoint" / "global.safetensors"),
    )


@pytest.mark.parametrize("case", CASES)
def test_five_clients_together_end_as_one_at_a_time(
    tiny_model_dir: Path, tmp_path: Path, case: str
) -> None:
    a, b = _states(tiny_model_dir, tmp_path, CASES[case])
    assert _relative(a, b) <= 1e-5  # batched products sum in another order
    rows_one, rows_five = _metrics(tmp_path / "one"), _metrics(tmp_path / "five")
    assert _close(rows_five, rows_one), (rows_five, rows_one)
    if case == "faults":
        assert any(r["failed"] for r in rows_one)  # a crash really dropped a client


@pytest.mark.parametrize("case", LOSSY)
def test_with_rounding_after_training_or_in_it_clients_together_end_within_its_step(
    tiny_model_dir: Path, tmp_path: Path, case: str
) -> None:
    flags, bound = LOSSY[case]
    a, b = _states(tiny_model_dir, tmp_path, flags)
    assert 0 < _relative(a, b) <= bound
    same = ("clients", "aggregated", "failed", "bytes_up", "bytes_down", "examples")
    rows = [[{k: r.get(k) for k in same} for r in _metrics(tmp_path / x)] for x in ("one", "five")]
    assert rows[0] == rows[1]


def test_clients_that_cannot_train_together_are_refused_in_one_line(capsys) -> None:
    for flags, why in [
        (["--method", "full"], "method full"),
        (["--algorithm", "flora"], "algorithm flora"),
        (["--runtime", "flower-sim"], "a Flower runtime"),
        (["--set", "federation.parallel_clients=0"], "a whole number >= 1, or auto"),
        (["--set", "federation.pass_cost=-3"], "a whole number >= 0, or auto"),
    ]:
        said = refused(
            ["run", "--dry-run", "--set", "federation.parallel_clients=4", *flags], capsys
        )
        assert "federation." in said and why in said, said


def test_auto_picks_a_number_on_the_cpu_and_the_config_records_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import yaml

    out = tmp_path / "auto"
    _run(tiny_model_dir, out, "auto", ())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    chosen = saved["federation"]["parallel_clients"]
    assert chosen.isdigit() and 1 <= int(chosen) <= 5
    assert "federation.parallel_clients" in saved["filled"]


@pytest.mark.parametrize(
    ("seconds", "chosen"),
    [
        ({1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}, 4),  # every doubling twice the rate; 8 > 5 per round
        ({1: 1.0, 2: 1.96, 4: 3.0}, 1),  # 2% faster at K = 2: within the noise
        ({1: 1.0, 2: 1.8, 4: 3.5}, 2),  # 11% faster at K = 2, then 3% more at K = 4
    ],
)
def test_auto_on_the_cpu_doubles_k_only_for_a_clear_gain(
    tiny_config, monkeypatch, seconds: dict[int, float], chosen: int
) -> None:
    from fedpet.experiment import prepare
    from fedpet.runtime import parallel

    monkeypatch.setattr(parallel, "timed_probe", lambda exp, indices, k: seconds[k])
    assert parallel.fastest(prepare(tiny_config()), 5) == chosen  # 5 clients a round


def test_a_measured_pass_cost_is_recorded_where_clients_train_together(tiny_config) -> None:
    from fedpet.experiment import prepare
    from fedpet.runtime.parallel import ONE_PASS, choose

    exp = choose(prepare(tiny_config(**{"federation.parallel_clients": "3"})))
    cost = exp.cfg.federation.pass_cost
    assert cost.isdigit() and 0 <= int(cost) <= ONE_PASS
    assert "federation.pass_cost" in exp.cfg.filled
    alone = choose(prepare(tiny_config()))  # one client at a time: nothing to measure
    assert alone.cfg.federation.pass_cost == "auto"
    assert "federation.pass_cost" not in alone.cfg.filled
    # every example cut to 8 tokens: every batch as wide, one pass whatever it costs
    cut = choose(prepare(tiny_config(**{"federation.parallel_clients": "3", "data.max_length": 8})))
    assert cut.cfg.federation.pass_cost == str(ONE_PASS)


def test_the_memory_plan_counts_activations_per_example_and_state_per_client(
    tiny_config,
) -> None:
    from fedpet.experiment import prepare
    from fedpet.runtime.parallel import plan

    plans = {}
    for batch in (4, 8):
        exp = prepare(tiny_config(**{"train.batch_size": batch}))
        plans[batch] = plan(exp)
    # the same longest examples, twice as many: about twice the saved activations
    assert 1.8 < plans[8].activations / plans[4].activations < 2.2
    trainable = sum(p.numel() for p in exp.params.values())
    assert plans[8].state == trainable * 4 * 4  # fp32 tensor, gradient, two AdamW moments
    assert plans[8].bytes(10) == 10 * plans[8].bytes(1)


class _Gate(nn.Module):
    """A trained scale on a LayerNorm's output, read as a Python number (no vmap for it)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.scale = inner, nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float(self.scale.item())


class _LastNorms(MethodBase):
    """A user's method: the last layer's LayerNorms train (as the API guide's example)."""

    name = "last-norms"
    default_lr = 1e-3

    def attach(self, encoder: nn.Module, options: object) -> nn.Module:
        last = f"layer.{encoder.config.num_hidden_layers - 1}."
        for name, param in encoder.named_parameters():
            param.requires_grad_("LayerNorm" in name and last in name)
        return encoder


class _Gated(MethodBase):
    name = "gated"
    default_lr = 1e-3

    def attach(self, encoder: nn.Module, options: object) -> nn.Module:
        for param in encoder.parameters():
            param.requires_grad_(False)
        encoder.embeddings.LayerNorm = _Gate(encoder.embeddings.LayerNorm)
        return encoder


@pytest.fixture
def user_methods():
    for method in (_LastNorms(), _Gated()):
        register_method(method)
    yield
    for name in ("last-norms", "gated"):
        del METHODS[name]


def test_a_user_s_method_trains_together_or_is_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, user_methods, capsys
) -> None:
    a, b = _states(tiny_model_dir, tmp_path, ("--method", "last-norms"))
    assert _relative(a, b) <= 1e-5
    argv = run_argv(
        tiny_model_dir, tmp_path / "gated", "--method", "gated",
        "--set", "federation.parallel_clients=3",
    )  # fmt: skip
    said = refused(argv, capsys, keep=tmp_path)
    assert "method.name = 'gated' is not allowed with federation.parallel_clients = 3" in said
    assert not (tmp_path / "gated").exists()  # refused before anything was written
