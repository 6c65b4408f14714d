"""Devices and precision: where a run computes is checked, resolved and recorded; what it
sends and saves is CPU fp32 wherever it trained."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import refusal, run_argv
from safetensors.torch import load_file
from torch import nn

from fedpet.algorithms import PlainTraining
from fedpet.cli import main
from fedpet.client import train_epoch
from fedpet.data.batching import Encoded
from fedpet.devices import autocast, resolve_device
from fedpet.dropout import Stream, seed_tensor
from fedpet.errors import FedpetError
from fedpet.state import extract

HAS_CUDA = torch.cuda.is_available()


def test_an_explicit_cpu_run_records_its_device_and_precision(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "cpu"
    assert main(run_argv(tiny_model_dir, out, "--device", "cpu", "--precision", "bf16")) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["device"], cfg["train"]["precision"]) == ("cpu", "bf16")
    state = load_file(out / "checkpoint" / "global.safetensors")
    assert state and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values()
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_up_total"] == 2 * 2 * 4 * summary["trainable_params"]
    assert (summary["device"], summary["precision"]) == ("cpu", "bf16")
    assert "peak_gpu_mb" not in summary  # a CUDA run's figure


def test_auto_is_resolved_before_it_is_written(tiny_model_dir, tmp_path, capsys) -> None:
    assert main(["run", "--dry-run", "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["device"] == ("cuda" if HAS_CUDA else "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="refusals of an absent CUDA device need a machine without")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_in_one_line(device, capsys) -> None:
    err = refusal(["--device", device], capsys)
    assert f"device = '{device}' is not allowed: this machine has no CUDA device" in err


def test_a_device_torch_does_not_know_is_refused_by_its_rule(capsys) -> None:
    err = refusal(["--device", "tpu"], capsys)
    assert "device = 'tpu' is not allowed: auto, cpu, cuda, cuda:N or mps" in err


def test_a_cuda_index_beyond_the_devices_is_refused() -> None:
    count = torch.cuda.device_count() if HAS_CUDA else 0
    with pytest.raises(FedpetError, match=f"this machine has {count} CUDA|no CUDA device"):
        resolve_device(f"cuda:{count}")


@pytest.mark.skipif(HAS_CUDA, reason="fp16 is refused on the CPU only")
def test_fp16_on_the_cpu_is_refused_in_one_line(capsys) -> None:
    err = refusal(["--device", "cpu", "--precision", "fp16"], capsys)
    assert "train.precision = 'fp16' is not allowed: fp32 or bf16 on device = cpu" in err
    assert "needs a CUDA device" in err


def linear_data(n: int = 64) -> tuple[nn.Module, Encoded]:
    """A bag-of-tokens classifier and a separable two-label task of token ids."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    ids = [np.array([1 + 2 * int(y), 2, 3], dtype=np.int32) for y in labels]

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.EmbeddingBag(8, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, ids, mask, segments=None):
            return self.head(self.embed(ids))

    torch.manual_seed(0)
    return Bag(), Encoded(ids, labels, 0, None)


STREAM = Stream(seed_tensor(0))


def scaled_training(precision: str, epochs: int = 8) -> tuple[list[float], torch.amp.GradScaler]:
    model, data = linear_data()
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = [np.arange(i, i + 16) for i in range(0, 64, 16)]
    losses = [
        train_epoch(
            model,
            params,
            data,
            batches,
            optimizer,
            None,
            PlainTraining(),
            1.0,
            STREAM,
            0,
            precision,
            scaler,
        )
        / 64
        for _ in range(epochs)
    ]
    return losses, scaler


def test_scaled_training_unscales_before_clipping_and_lowers_the_loss() -> None:
    """The GradScaler path fp16 takes on CUDA, run here in fp32: the same steps as unscaled."""
    scaled, scaler = scaled_training("fp32")
    model, data = linear_data()
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    batches = [np.arange(i, i + 16) for i in range(0, 64, 16)]
    plain = [
        train_epoch(model, params, data, batches, optimizer, None, PlainTraining(), 1.0, STREAM)
        / 64
        for _ in range(8)
    ]
    assert scaled[-1] < 0.5 * scaled[0]
    # the clip saw unscaled gradients (a scaled clip would shrink every step by 2**10)
    assert np.allclose(scaled, plain, rtol=1e-5)
    assert scaler.get_scale() == 2.0**10  # no overflow, no step skipped at this scale


def test_autocast_is_off_in_fp32_and_on_in_bf16_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    x = torch.ones(2, 2)
    with autocast(cpu, "fp32"):
        assert (x @ x).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_extract_gives_cpu_fp32_copies() -> None:
    p = {"w": nn.Parameter(torch.ones(3, dtype=torch.bfloat16))}
    state = extract(p)
    assert state["w"].dtype == torch.float32 and state["w"].device.type == "cpu"
    state["w"].add_(1)
    assert float(p["w"].detach().sum()) == 3.0  # a copy, not a view


@pytest.mark.gpu
def test_a_cuda_run_trains_on_the_gpu_and_sends_what_a_cpu_run_sends(
    tiny_model_dir, tmp_path
) -> None:
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(run_argv(tiny_model_dir, out, "--device", device)) == 0
        runs[device] = json.loads((out / "summary.json").read_text())
        assert ("peak_gpu_mb" in runs[device]) == (device == "cuda")
        state = load_file(out / "checkpoint" / "global.safetensors")
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())
    assert runs["cuda"]["bytes_up_total"] == runs["cpu"]["bytes_up_total"]
    assert runs["cuda"]["trainable_params"] == runs["cpu"]["trainable_params"]


@pytest.mark.gpu
def test_fp16_on_cuda_lowers_the_loss_with_fp32_master_weights(tiny_config) -> None:
    from fedpet.client import LocalTraining
    from fedpet.experiment import prepare

    exp = prepare(tiny_config(device="cuda", **{"train.precision": "fp16", "train.head_lr": 0.05}))
    assert next(exp.model.parameters()).device.type == "cuda"
    indices = np.arange(len(exp.train))
    session = LocalTraining(
        exp.model, exp.params, exp.head_names, exp.train, indices, exp.cfg.train,
        PlainTraining(), seed=0, epochs=6,
    )  # fmt: skip
    losses = [session.run_epoch() / len(indices) for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0]
    assert session.scaler is not None
    assert all(p.dtype == torch.float32 for p in exp.params.values())


def test_a_supernode_takes_its_device_from_its_node_config() -> None:
    from fedpet.apps import config_from_run_config

    run_config = {"fedpet": "device: auto\nfederation: {clients: 2}\n"}
    assert config_from_run_config(run_config, {"device": "cpu"}).device == "cpu"
    assert config_from_run_config(run_config, {"partition-id": 0}).device == resolve_device("auto")
    if not HAS_CUDA:
        with pytest.raises(FedpetError, match="device = 'cuda' is not allowed"):
            config_from_run_config(run_config, {"device": "cuda"})


def test_a_supernode_resolves_a_run_s_config_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.app import Context, RecordDict

    from fedpet import apps

    resolved = []
    monkeypatch.setattr(apps, "resolve", lambda cfg: resolved.append(cfg) or cfg)
    run_config = {"fedpet": "federation: {clients: 2}\n"}

    def context(run: int, node_config: dict) -> Context:
        return Context(run, 1, node_config, RecordDict(), run_config)

    first = apps.node_run_config(context(7, {"partition-id": 0}))
    assert apps.node_run_config(context(7, {"partition-id": 0})) is first  # a later message
    assert len(resolved) == 1
    apps.node_run_config(context(8, {"partition-id": 0}))  # the next run
    apps.node_run_config(context(8, {"partition-id": 0, "device": "cpu"}))
    assert len(resolved) == 3


@pytest.mark.integration  # runs scripts/gpu-check.sh
@pytest.mark.skipif(HAS_CUDA, reason="on CUDA the script runs the checks")
def test_the_gpu_check_skips_in_one_line_without_cuda() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "gpu-check.sh"
    done = subprocess.run(
        [str(script)], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu-check: no CUDA device here (torch sees none): nothing to check"
    ]
