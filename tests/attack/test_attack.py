"""``fedpet attack``: token scores, the recoveries, and the command on a tiny model."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import refused, run_argv

from fedpet.attack.inversion import (
    embedding_rows,
    gradient_distance,
    labels_from_bias,
    match_gradients,
)
from fedpet.attack.run import AttackSpec, attack, client_update, known_positions
from fedpet.attack.tokens import frequent_tokens, token_scores
from fedpet.cli import main
from fedpet.data.batching import collate
from fedpet.experiment import prepare


def test_token_scores_match_the_hand_computation() -> None:
    scores = token_scores([1, 2, 3, 4, 4], [2, 3, 5])  # 2 hits, 4 recovered, 3 true
    assert scores.precision == 0.5
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert token_scores([7, 8], [2, 3]) == token_scores([], [2, 3])
    assert token_scores([], [2, 3]).f1 == 0.0
    assert token_scores([3, 2], [2, 3]).f1 == 1.0


def test_the_prior_guess_is_the_tokens_most_texts_hold() -> None:
    texts = [np.array([1, 2, 2, 3]), np.array([2, 3, 4]), np.array([2, 4, 5]), np.array([4])]
    # 2 and 4 in three texts each (2 first seen), 3 in two, 1 and 5 in one; 3 excluded
    assert frequent_tokens(texts, exclude={3}) == [2, 4, 1, 5]


def attack_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--model",
        str(model),
        "--max-train-samples",
        "64",
        "--set",
        "data.max_length=32",
        "--set",
        "federation.clients=4",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("batch", [1, 4])
def test_full_finetuning_gives_away_exactly_the_batch_tokens(tiny_config, batch: int) -> None:
    result = attack(tiny_config(**{"method.name": "full"}), AttackSpec(examples=8, batch=batch))
    assert result["recovery"] == "embedding rows"
    assert len(result["batches"]) == 8 // batch
    for record in result["batches"]:
        assert record["recovered"] == record["true"] and len(record["true"]) > 0
        assert len(record["examples"]) == batch
    assert result["f1"] == result["precision"] == result["recall"] == 1.0


def test_embedding_rows_are_the_rows_that_moved() -> None:
    update = torch.zeros(50, 4)
    update[[3, 17, 40]] = torch.randn(3, 4)
    assert embedding_rows(update) == {3, 17, 40}
    noisy = update * 100 + 1e-3 * torch.randn(50, 4)  # a noise floor far below the rows
    assert embedding_rows(noisy) == {3, 17, 40}


def test_labels_come_from_the_head_bias_gradient(tiny_config) -> None:
    exp = prepare(tiny_config(**{"method.name": "bitfit"}), attention="eager")
    for indices in ([5], [0, 1, 2, 3, 4, 5, 6, 7]):
        batch = collate(exp.train, torch.tensor(indices).numpy())
        update = client_update(exp, batch)
        grad = -update["head.bias"] / exp.learning_rates["head.bias"]
        labels = labels_from_bias(grad, len(indices))
        assert sorted(labels.tolist()) == sorted(batch["labels"].tolist())


def test_the_known_layout_is_cls_sep_and_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    known = known_positions(mask)
    assert known.tolist() == [
        [True, False, False, False, True],
        [True, False, True, True, True],
    ]


def test_gradient_matching_closes_in_on_the_observed_gradient(tiny_config) -> None:
    exp = prepare(tiny_config(**{"method.name": "bitfit"}), attention="eager")
    batch = collate(exp.train, torch.tensor([3]).numpy())
    observed = {n: -t / exp.learning_rates[n] for n, t in client_update(exp, batch).items()}
    known = known_positions(batch["attention_mask"])
    probe = {**batch, "input_ids": torch.where(known, batch["input_ids"], 0)}

    def distance(steps: int) -> float:
        embeds = match_gradients(exp.model, exp.params, observed, probe, known, steps, 0.01, 0)
        hook = exp.model.word_embeddings().register_forward_hook(
            lambda _m, _i, out: torch.where(known.unsqueeze(-1), out, embeds)
        )
        try:
            loss = torch.nn.functional.cross_entropy(
                exp.model(probe["input_ids"], probe["attention_mask"]), probe["labels"]
            )
            grads = torch.autograd.grad(loss, list(exp.params.values()), materialize_grads=True)
        finally:
            hook.remove()
        return float(gradient_distance(list(grads), [observed[n] for n in exp.params]))

    true = [observed[n] for n in exp.params]
    assert float(gradient_distance(true, true)) == pytest.approx(0.0, abs=1e-6)
    start, end = distance(0), distance(60)
    assert end < 0.5 * start


def test_heavy_dp_noise_hides_the_embedding_rows(tiny_config) -> None:
    cfg = tiny_config(
        **{
            "method.name": "full",
            "privacy.enabled": True,
            "privacy.noise": "distributed",
            "privacy.sampling": "fixed",
            "privacy.noise_multiplier": 1.0,
            "privacy.clip": 0.01,
        }
    )
    result = attack(cfg, AttackSpec(examples=4))
    assert result["dp"]["noise_std"] == pytest.approx(1.0 * 0.01 / math.sqrt(2))
    assert result["f1"] < 0.5


def test_attack_command_writes_the_result_and_report_tabulates_it(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "leak" / "a-lora"
    argv = attack_argv(tiny_model_dir, out, "--method", "lora", "--examples", "2", "--steps", "3")
    assert main([*argv, "--codec-up", "int8"]) == 0
    assert "token F1" in capsys.readouterr().out
    result = json.loads((out / "attack.json").read_text())
    assert result["codec"] == "int8" and result["steps"] == 3 and len(result["batches"]) == 2
    assert result["prior_f1"] == np.mean([b["prior_f1"] for b in result["batches"]])
    full = attack_argv(tiny_model_dir, tmp_path / "leak" / "b-full", "--method", "full")
    assert main(full) == 0
    assert main(["report", str(tmp_path / "leak")]) == 0
    rows = (tmp_path / "leak" / "leakage.md").read_text().splitlines()[-2:]
    lora = f"| lora | init | int8 | - | 1 | 2 | gradient matching | {result['precision']:.2f}"
    assert "| full | init | fp32 | - | 1 | 20 | embedding rows | 1.00 | 1.00 | 1.00 |" in rows[0]
    assert lora in rows[1]  # by method, whatever the folders are called


def test_attack_starts_from_a_run_s_last_global_state(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, run, "--method", "full", rounds=2)) == 0
    out = tmp_path / "attack"
    assert main(["attack", "--run", str(run), "--examples", "4", "--out", str(out)]) == 0
    result = json.loads((out / "attack.json").read_text())
    assert result["rounds_trained"] == 2 and result["f1"] == 1.0
    lora = ["attack", "--run", str(run), "--method", "lora", "--out", str(tmp_path / "x")]
    assert "its checkpoint does not hold the trainable tensors of method 'lora'" in refused(
        lora, capsys, keep=tmp_path
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch", "0"], "--batch = 0 is not allowed"),
        (["--examples", "6", "--batch", "4"], "a multiple of --batch (4)"),
        (["--examples", "500"], "--examples = 500 is not allowed"),
        (["--steps", "-1"], "--steps = -1 is not allowed"),
    ],
)
def test_bad_attack_arguments_are_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, extra: list[str], message: str, capsys
) -> None:
    out = tmp_path / "attack"
    err = refused(attack_argv(tiny_model_dir, out, *extra), capsys, keep=tmp_path)
    assert message in err
    assert not out.exists()
