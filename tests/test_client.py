import numpy as np
import torch
from torch import nn

from fedpet.client import make_optimizer
from fedpet.config import TrainConfig
from fedpet.runtime.rounds import sample_cohort


def params() -> dict[str, nn.Parameter]:
    return {"body.w": nn.Parameter(torch.ones(3)), "head.w": nn.Parameter(torch.ones(2))}


def test_optimizer_gives_the_head_its_own_learning_rate() -> None:
    opt, sched = make_optimizer(params(), {"head.w"}, TrainConfig(lr=1e-3, head_lr=3e-2), 10)
    assert isinstance(opt, torch.optim.AdamW) and sched is None
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 3e-2]


def test_sgd_and_linear_schedule_decay_to_zero() -> None:
    cfg = TrainConfig(lr=0.1, head_lr=0.2, optimizer="sgd", schedule="linear")
    p = params()
    opt, sched = make_optimizer(p, {"head.w"}, cfg, total_steps=4)
    assert isinstance(opt, torch.optim.SGD) and sched is not None
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sum(x.sum() for x in p.values()).backward()
        opt.step()
        sched.step()
    assert np.allclose(lrs, [0.1, 0.075, 0.05, 0.025])
    assert opt.param_groups[1]["lr"] == 0.0


def test_cohort_sampling_is_seeded_uniform_and_without_replacement() -> None:
    a = sample_cohort(seed=3, round_=5, num_clients=100, per_round=10)
    assert np.array_equal(a, sample_cohort(3, 5, 100, 10))
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    assert not np.array_equal(a, sample_cohort(3, 6, 100, 10))
    counts = np.bincount(
        np.concatenate([sample_cohort(0, r, 20, 5) for r in range(1, 2001)]), minlength=20
    )
    assert counts.min() > 400 and counts.max() < 600  # each client ~ 2000 x 5 / 20 = 500


def train_loss(exp, precision: str) -> float:
    """The mean task loss of every training example, in eval mode (no dropout)."""
    from fedpet.algorithms import PlainTraining
    from fedpet.client import batch_loss
    from fedpet.data.batching import collate
    from fedpet.devices import autocast

    exp.model.eval()
    with torch.no_grad(), autocast(exp.device, precision):
        loss = batch_loss(exp.model, collate(exp.train, np.arange(len(exp.train))), PlainTraining())
    return float(loss)


def test_bf16_training_on_the_cpu_lowers_the_loss_and_keeps_fp32_weights(tiny_config) -> None:
    from fedpet.algorithms import PlainTraining
    from fedpet.client import LocalTraining
    from fedpet.experiment import prepare

    losses, states = {}, {}
    for precision in ("fp32", "bf16"):
        exp = prepare(tiny_config(**{"train.precision": precision, "train.head_lr": 0.05}))
        indices = np.arange(len(exp.train))
        session = LocalTraining(
            exp.model,
            exp.params,
            exp.head_names,
            exp.train,
            indices,
            exp.cfg.train,
            PlainTraining(),
            seed=0,
            epochs=6,
        )
        before = train_loss(exp, precision)
        for _ in range(6):
            session.run_epoch()
        losses[precision] = [before, train_loss(exp, precision)]
        states[precision] = {n: p.detach().clone() for n, p in exp.params.items()}
    # the loss over the training examples, without dropout, fell
    assert losses["bf16"][1] < 0.9 * losses["bf16"][0]
    assert all(p.dtype == torch.float32 for p in states["bf16"].values())  # master weights
    # autocast acted: the same seed and data give other losses and weights than fp32
    assert losses["bf16"] != losses["fp32"]
    assert not all(torch.equal(states["bf16"][n], states["fp32"][n]) for n in states["fp32"])


def test_a_bf16_run_sends_and_checkpoints_fp32_and_records_its_precision(
    tiny_model_dir, tmp_path
) -> None:
    import json

    import yaml
    from helpers import run_argv
    from safetensors.torch import load_file

    from fedpet.cli import main

    out = tmp_path / "bf16"
    assert main(run_argv(tiny_model_dir, out, "--set", "train.precision=bf16")) == 0
    state = load_file(out / "checkpoint" / "global.safetensors")
    assert all(t.dtype == torch.float32 for t in state.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_up_total"] == 2 * 2 * 4 * summary["trainable_params"]  # fp32 codec
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == "bf16"


def test_max_steps_caps_a_client_s_local_steps(tiny_config) -> None:
    from fedpet.algorithms.base import PlainTraining
    from fedpet.client import LocalTraining
    from fedpet.experiment import prepare

    exp = prepare(tiny_config(**{"train.max_steps": 3, "train.local_epochs": 2}))
    steps: list[int] = []
    training = LocalTraining(
        exp.model,
        exp.params,
        exp.head_names,
        exp.train,
        np.arange(40),
        exp.cfg.train,
        PlainTraining(),
        seed=0,
        epochs=2,
    )
    training.report = lambda done, total: steps.append(done)
    result = training.run()
    assert result.steps == 3 and steps == [1, 2, 3]  # 40 examples of 8: 5 a epoch uncapped
    assert (result.seen, result.num_examples) == (24, 40)  # trained on 3 x 8; weighs 40


def test_a_capped_run_counts_the_examples_its_steps_saw(tiny_model_dir, tmp_path) -> None:
    import json

    from helpers import run_argv

    from fedpet.cli import main

    # 4 clients of 16 examples, 2 a round, 2 epochs of batches of 8: 4 steps, capped at 1
    out = tmp_path / "capped"
    flags = ("--batch-size", "8", "--set", "train.local_epochs=2", "--set", "train.max_steps=1")
    assert main(run_argv(tiny_model_dir, out, *flags)) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["examples"] for r in rows] == [2 * 8, 2 * 8]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples_seen"] == 2 * 2 * 8  # not 2 rounds x 2 x 16 x 2 epochs
