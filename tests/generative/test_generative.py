"""Generative tasks: response-only loss, option and exact-match scoring, instruction files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_argv

from fedpet.algorithms.base import PlainTraining
from fedpet.cli import main
from fedpet.client import batch_loss
from fedpet.data.batching import Encoded, collate
from fedpet.data.splits import Split
from fedpet.errors import FedpetError
from fedpet.generative.lm import CausalLM
from fedpet.generative.prompts import (
    answer_ids,
    encode_generative,
    prompt_floor,
    prompt_ids,
    render,
)
from fedpet.generative.scoring import (
    evaluate_generative,
    greedy_matches,
    option_scores,
    prompt_of,
)
from fedpet.model import build_model

GENERATE = {"data.objective": "generate"}


def causal(tiny_decoder_dirs, tiny_config, family: str = "gpt2", **overrides):
    model, tokenizer = build_model(
        tiny_config(model=str(tiny_decoder_dirs[family]), **GENERATE, **overrides), 2
    )
    assert isinstance(model, CausalLM)
    return model.eval(), tokenizer


def test_the_loss_is_the_mean_over_response_tokens_only(tiny_decoder_dirs, tiny_config) -> None:
    model, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    split = Split(["Is it good?", "Say no"], np.zeros(2, dtype=np.int64), responses=["yes", "no"])
    data = encode_generative(tokenizer, split, 64, None)
    eos = tokenizer.eos_token_id
    for i, (prompt, answer) in enumerate([("Is it good?", "yes"), ("Say no", "no")]):
        expected_prompt = [
            tokenizer.bos_token_id,
            *tokenizer(render(tokenizer, prompt))["input_ids"],
        ]
        n = data.prompt_lengths[i]
        assert data.input_ids[i][:n].tolist() == expected_prompt
        assert data.input_ids[i][n:].tolist() == [*tokenizer(answer)["input_ids"], eos]
    batch = collate(data, np.array([0, 1]))
    with torch.no_grad():
        loss = batch_loss(model, batch, PlainTraining())
        logits = model(batch["input_ids"], batch["attention_mask"])
    by_hand = []  # -log p(token t | tokens before t), over every response token of the batch
    for i in range(2):
        n, ids = data.prompt_lengths[i], data.input_ids[i]
        logp = torch.log_softmax(logits[i].double(), -1)
        by_hand += [-float(logp[t - 1, ids[t]]) for t in range(n, len(ids))]
    assert float(loss) == pytest.approx(np.mean(by_hand), rel=1e-5)
    # a different prompt before the same response changes the loss; the targets never
    # include a prompt or padding position
    assert int((batch["targets"] != -100).sum()) == len(by_hand)


def test_a_long_prompt_gives_up_its_start_and_keeps_the_response(
    tiny_decoder_dirs, tiny_config
) -> None:
    _, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    split = Split(["word " * 100], np.zeros(1, dtype=np.int64), responses=["fresh"])
    data = encode_generative(tokenizer, split, 16, None)
    ids, n = data.input_ids[0], data.prompt_lengths[0]
    answer = [*tokenizer("fresh")["input_ids"], tokenizer.eos_token_id]
    assert len(ids) == 16 and ids[n:].tolist() == answer
    turn = tokenizer(render(tokenizer, "word"))["input_ids"]
    assert ids[:n].tolist()[-3:] == turn[-3:]  # the prompt's end (the turn to answer) stays


def test_a_long_response_keeps_half_the_length_for_its_prompt(
    tiny_decoder_dirs, tiny_config
) -> None:
    _, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    prompt = "Summarise the review: the plot is thin and the acting is worse"
    split = Split([prompt], np.zeros(1, dtype=np.int64), responses=["word " * 200])
    data = encode_generative(tokenizer, split, 64, None)
    ids, n = data.input_ids[0], data.prompt_lengths[0]
    full_prompt = prompt_ids(tokenizer, [prompt])[0]
    response = answer_ids(tokenizer, ["word " * 200])[0]
    assert len(full_prompt) > 32 and len(ids) == 64
    assert n == prompt_floor(64) == 32  # the prompt keeps half; its end stays by the answer
    assert ids[:n].tolist() == full_prompt[-32:]
    assert ids[n:].tolist() == response[:32]  # the response gives up its end
    short = Split(["Hi"], np.zeros(1), responses=["word " * 200])
    short = encode_generative(tokenizer, short, 64, None)
    assert short.prompt_lengths[0] == len(prompt_ids(tokenizer, ["Hi"])[0])  # all of it


LONG_OPTIONS = ("no", "yes, without any doubt at all")


def test_every_option_is_scored_after_one_prompt_whatever_the_gold_answer(
    tiny_decoder_dirs, tiny_config
) -> None:
    _, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    texts = ["word " * 80, "a fine film", "word " * 30 + "dull"]
    encoded = [
        encode_generative(
            tokenizer,
            Split(texts, np.full(3, k), responses=[LONG_OPTIONS[k]] * 3),
            48,
            LONG_OPTIONS,
        )
        for k in range(2)
    ]
    lengths = {len(x) for x in answer_ids(tokenizer, LONG_OPTIONS)}
    assert len(lengths) == 2  # the gold answers differ in length
    for i in range(3):
        prompts = [prompt_of(data, i).tolist() for data in encoded]
        assert prompts[0] == prompts[1]  # the same prompt, whichever answer is gold
        assert len(prompts[0]) <= 48 - max(lengths)  # room for the longest option
    assert encoded[0].prompt_lengths[0] == 48 - max(lengths)  # a long prompt fills it


def test_options_longer_than_the_gold_answer_fit_the_model_s_positions(
    tiny_decoder_dirs, tiny_config
) -> None:
    # 128 is the tiny GPT-2's n_positions; the gold answer is the short option
    model, tokenizer = causal(tiny_decoder_dirs, tiny_config, **{"data.max_length": 128})
    split = Split(["word " * 200] * 2, np.zeros(2, dtype=np.int64), responses=["no", "no"])
    data = encode_generative(tokenizer, split, 128, LONG_OPTIONS)
    assert option_scores(model, data, 4, "fp32").shape == (2, 2)  # no position past 128
    assert greedy_matches(model, data, 4, "fp32").shape == (2,)
    assert max(len(prompt_of(data, 0)) + len(o) for o in data.options) == 128


def test_options_that_leave_a_prompt_less_than_half_the_length_are_refused(
    tiny_decoder_dirs, tiny_config
) -> None:
    _, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    split = Split(["hi"], np.zeros(1, dtype=np.int64), responses=["no"])
    with pytest.raises(FedpetError, match=r"data.max_length = 12 is not allowed: the longest"):
        encode_generative(tokenizer, split, 12, LONG_OPTIONS)


def test_a_tokenizer_s_chat_template_renders_the_prompt(tiny_decoder_dirs, tiny_config) -> None:
    _, llama = causal(tiny_decoder_dirs, tiny_config, "llama")
    _, gpt2 = causal(tiny_decoder_dirs, tiny_config, "gpt2")
    assert render(llama, "Hi") == "<|user|>\nHi\n<|assistant|>\n"
    assert render(gpt2, "Hi") == "### Instruction:\nHi\n\n### Response:\n"


def planted(model: CausalLM, tokens: list[int], vocab: int) -> CausalLM:
    """The model with an output layer that prefers ``tokens``, whatever it read."""
    head = torch.nn.Linear(32, vocab)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokens] = 8.0
    return CausalLM(model.decoder, head).eval()


def test_option_scoring_ranks_a_planted_answer_first(tiny_decoder_dirs, tiny_config) -> None:
    model, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    options = ("fresh", "rotten", "meh")
    texts = ["a fine film", "dull", "two hours of my life", "ok"]
    split = Split(texts, np.array([1, 0, 1, 2]), responses=[options[i] for i in [1, 0, 1, 2]])
    data = encode_generative(tokenizer, split, 64, options)
    scores = option_scores(model, data, 5, "fp32")
    # each score by hand: the option's tokens' log-probabilities after the unpadded prompt
    for i in range(len(texts)):
        prompt = data.input_ids[i][: data.prompt_lengths[i]]
        for k, option in enumerate(data.options):
            seq = torch.from_numpy(np.concatenate([prompt, option]).astype(np.int64))[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(seq, torch.ones_like(seq))[0].double(), -1)
            total = sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(option))
            assert scores[i, k] == pytest.approx(total, abs=1e-4)
    rotten = set(data.options[1].tolist()) - set(data.options[0].tolist())
    rotten -= set(data.options[2].tolist())
    boosted = planted(model, sorted(rotten), len(tokenizer))
    assert (option_scores(boosted, data, 3, "fp32").argmax(1) == 1).all()
    metrics = evaluate_generative(boosted, data, 3)
    assert metrics["accuracy"] == 0.5  # the two examples whose answer is "rotten"
    assert {"loss", "perplexity", "token_accuracy", "exact_match", "macro_f1"} <= set(metrics)


def test_exact_match_is_the_greedy_continuation_token_for_token(
    tiny_decoder_dirs, tiny_config
) -> None:
    model, tokenizer = causal(tiny_decoder_dirs, tiny_config)
    prompts = [
        np.asarray(tokenizer(t)["input_ids"], dtype=np.int32)
        for t in ["a", "what a film", "the plot is thin and the acting", "so"]
    ]

    def greedy(prompt: np.ndarray, steps: int) -> list[int]:  # one unpadded row at a time
        seq = prompt.astype(np.int64).tolist()
        for _ in range(steps):
            ids = torch.tensor([seq])
            with torch.no_grad():
                seq.append(int(model(ids, torch.ones_like(ids))[0, -1].argmax()))
        return seq[len(prompt) :]

    # examples 0 and 2 are answered by the model's own greedy tokens, 1 and 3 are not
    answers = [greedy(p, 2) for p in prompts]
    answers[1][1] = (answers[1][1] + 1) % len(tokenizer)
    answers[3][0] = (answers[3][0] + 1) % len(tokenizer)
    data = Encoded(
        input_ids=[
            np.concatenate([p, a]).astype(np.int32) for p, a in zip(prompts, answers, strict=True)
        ],
        labels=np.zeros(4, dtype=np.int64),
        pad_id=0,
        prompt_lengths=np.array([len(p) for p in prompts]),
    )
    assert greedy_matches(model, data, 3, "fp32").tolist() == [True, False, True, False]


def test_an_instruction_file_trains_on_a_natural_partition(
    tiny_decoder_dirs, tmp_path: Path
) -> None:
    rows = [
        {
            "instruction": f"Name a colour ({i})",
            "input": "" if i % 2 else "sky",
            "output": c,
            "user": f"u{i % 3}",
        }
        for i, c in enumerate(["red", "blue", "green"] * 20)
    ]
    path = tmp_path / "instructions.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    out = tmp_path / "run"
    argv = run_argv(tiny_decoder_dirs["llama"], out, samples=60, clients=3, per_round=3)
    argv += ["--task", f"file:{path}", "--quiet", "--partition", "natural"]
    argv += ["--set", "data.objective=generate", "--set", "data.response_column=output"]
    assert main([*argv, "--set", "data.client_column=user"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_name"] == "token_accuracy" and summary["clients"] == 3
    assert summary["test_accuracy"] is None and summary["test_perplexity"] > 1
    part = json.loads((out / "partition.json").read_text())
    clients = part["clients"]
    assert sorted(c["name"] for c in clients) == ["u0", "u1", "u2"]
    assert sum(c["size"] for c in clients) == part["split"]["train"] == 48


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "data.response_column=nope"], "has no response column 'nope'"),
        (["--set", "data.options=[red,blue]"], "has response(s) ['green'] outside data.options"),
        (
            ["--partition", "dirichlet"],
            "data.partition = 'dirichlet' is not allowed: iid, quantity",
        ),
        (["--set", "algorithm.fedrs=0.5"], "null with data.objective = generate"),
        (
            ["--task", "rotten_tomatoes", "--set", "data.options=[a,b]"],
            "null for task 'rotten_tomatoes': its answers are its label names",
        ),
    ],
)
def test_bad_generative_input_is_refused_in_one_line(
    tiny_decoder_dirs, tmp_path: Path, flags: list[str], message: str, capsys
) -> None:
    from helpers import refusal

    path = tmp_path / "i.csv"
    pd.DataFrame(
        {"instruction": ["a", "b", "c"] * 4, "response": ["red", "blue", "green"] * 4}
    ).to_csv(path, index=False)
    args = ["--model", str(tiny_decoder_dirs["gpt2"]), "--task", f"file:{path}"]
    args += ["--set", "data.objective=generate", "--partition", "iid", *flags]
    assert message in refusal(args, capsys)
