"""The Flower runtime reuses the simulation's pieces: same cohorts, bytes and global state."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_argv
from safetensors.torch import load_file

from fedpet.cli import main

TIMING = {"train_seconds", "eval_seconds"}


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return run_argv(model, out, "--seed", "3", *extra)


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# FlexLoRA with two ranks: per-client downloads, layouts and server views on both sides;
# lossy codecs with random rounding, seeded alike on both sides
RANKED = ("--algorithm", "flexlora", "--set", "algorithm.ranks=[2,8]")
RANKED += ("--codec-up", "int8:row:sr", "--codec-down", "bf16")
# DP with central noise, Poisson cohorts and an adaptive clip: sampling, clipping, noise and
# the clip's update all happen on the server side of either runtime
CENTRAL_DP = ("--dp", "--dp-noise", "0.1", "--dp-clip", "0.05")
CENTRAL_DP += ("--set", "privacy.target_quantile=0.5")


@pytest.mark.parametrize("flags", [RANKED, CENTRAL_DP], ids=["flexlora-codecs", "central-dp"])
def test_flower_simulation_equals_the_in_process_runtime(
    tiny_model_dir: Path, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    flower, local = tmp_path / "flower", tmp_path / "local"
    assert main(_argv(tiny_model_dir, flower, "--runtime", "flower-sim", *flags)) == 0
    # Ray runs each ClientApp with one thread; so does the reference run, so that every
    # float sum reduces in the same order and the states are bitwise equal
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_argv(tiny_model_dir, local, *flags)) == 0
    finally:
        torch.set_num_threads(threads)
    a = load_file(flower / "checkpoint" / "global.safetensors")
    b = load_file(local / "checkpoint" / "global.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = _metrics(flower)
    assert rows == _metrics(local)
    summary = json.loads((flower / "summary.json").read_text())
    if flags == RANKED:
        full_rank = 2 * 2 * 4 * summary["trainable_params"]  # 2 rounds, 2 clients, fp32
        assert 0 < summary["bytes_up_total"] < full_rank  # rank-2 clients send less
    else:
        assert rows[-1]["epsilon"] > rows[0]["epsilon"] > 0 and rows[0]["dp_clip"] == 0.05
        assert summary["epsilon"] == rows[-1]["epsilon"]


def test_flower_sim_refuses_centralized(capsys) -> None:
    assert main(["run", "--dry-run", "--runtime", "flower-sim", "--centralized"]) == 2
    assert "runtime = 'flower-sim' is not allowed" in capsys.readouterr().err


def test_malformed_replies_are_refused() -> None:
    from flwr.app import Message, MetricRecord, RecordDict

    from fedpet.runtime.flower import parse_reply, to_record

    def reply(metrics: dict) -> Message:
        content = RecordDict({"arrays": to_record(b"\0" * 8), "metrics": MetricRecord(metrics)})
        return Message(content=content, dst_node_id=1, message_type="train")

    good = parse_reply(reply({"num-examples": 12, "loss": 0.5}))
    assert (good.payload, good.num_examples, good.loss) == (b"\0" * 8, 12, 0.5)
    with pytest.raises(ValueError, match="num-examples 0 is not a positive integer"):
        parse_reply(reply({"num-examples": 0, "loss": 0.5}))
    with pytest.raises(KeyError):
        parse_reply(reply({"loss": 0.5}))


def test_flower_sim_resumes_after_its_last_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    import yaml

    flower, local = tmp_path / "flower", tmp_path / "local"
    base = _argv(tiny_model_dir, flower, "--runtime", "flower-sim")
    assert main(base) == 0  # rounds 1-2; then it is as if the run had stopped there
    config = yaml.safe_load((flower / "config.yaml").read_text())
    config["federation"]["rounds"] = 4
    (flower / "config.yaml").write_text(yaml.safe_dump(config))
    (flower / "summary.json").unlink()
    assert main(["run", "--resume", str(flower)]) == 0  # rounds 3-4 on Flower again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_argv(tiny_model_dir, local, "--rounds", "4")) == 0
    finally:
        torch.set_num_threads(threads)
    a = load_file(flower / "checkpoint" / "global.safetensors")
    b = load_file(local / "checkpoint" / "global.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in _metrics(flower)] == [1, 2, 3, 4]
    assert _metrics(flower) == _metrics(local)


DISTRIBUTED_DP = ("--dp", "--dp-noise", "1", "--dp-clip", "0.05")
DISTRIBUTED_DP += ("--set", "privacy.noise=distributed", "--set", "privacy.sampling=fixed")


@pytest.mark.parametrize("dp", [(), DISTRIBUTED_DP], ids=["fedavg", "distributed-dp"])
def test_secure_aggregation_matches_the_plain_round_within_its_quantization(
    tiny_model_dir: Path, tmp_path: Path, dp: tuple[str, ...]
) -> None:
    secure, plain = tmp_path / "secure", tmp_path / "plain"
    flags = ("--rounds", "1", "--runtime", "flower-sim", *dp)
    assert main(_argv(tiny_model_dir, secure, *flags, "--secure-aggregation")) == 0
    assert main(_argv(tiny_model_dir, plain, *flags)) == 0
    a = load_file(secure / "checkpoint" / "global.safetensors")
    b = load_file(plain / "checkpoint" / "global.safetensors")
    # each client's update (clipped and noised by the client under DP), scaled by n_k / max n
    # (1 under DP), is clipped to +-8 and stochastically rounded to 2**22 levels: the
    # unmasked mean is off by < 2 clients x 16 / 2**22
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 2 * 16 / 2**22
    [row], [plain_row] = _metrics(secure), _metrics(plain)
    assert row["aggregated"] == 2 and row["clients"] == plain_row["clients"]
    assert row["train_loss"] == plain_row["train_loss"]  # same local training
    assert row["examples"] == plain_row["examples"]  # the counts travel apart from the weights
    assert row.get("epsilon") == plain_row.get("epsilon") and (row.get("epsilon", 1) > 0)
    # the upload is masked int64 vectors plus the key exchange, more than 2x the fp32 payload
    assert row["bytes_up"] > 2 * plain_row["bytes_up"]


def test_a_deployment_config_runs_only_under_flwr_run(capsys) -> None:
    assert main(["run", "--dry-run", "--runtime", "flower"]) == 0
    assert main(["run", "--runtime", "flower", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "runtime = 'flower' is a Flower deployment: start or resume it" in err
