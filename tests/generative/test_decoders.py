"""Decoder backbones (GPT-2, Llama, OPT): every method, both objectives, exact bytes."""

import json
from pathlib import Path

import pytest
import torch
from conftest import DECODER_FAMILIES
from helpers import refused, run_argv
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.client import evaluate
from fedpet.experiment import prepare
from fedpet.export import open_model
from fedpet.generative.lm import CausalLM
from fedpet.launch import run_config
from fedpet.model import TextClassifier, build_model
from fedpet.state import extract

METHODS = ("full", "adapter", "lora", "prefix", "prompt", "ia3", "bitfit")
REFUSED = {
    ("llama", "bitfit"): "adds or unfreezes no parameter of this backbone (a model without bias",
    ("opt", "adapter"): "the adapters library does not support it",
}
GENERATE = ("--set", "data.objective=generate")
LORA_TARGETS = {"gpt2": {"c_attn"}, "llama": {"q_proj", "v_proj"}, "opt": {"q_proj", "v_proj"}}


def one_round_argv(model: Path, out: Path, *extra: str) -> list[str]:
    """A federated round of two clients on a slice of rotten_tomatoes."""
    argv = run_argv(model, out, *extra, samples=24, clients=2, per_round=2, rounds=1)
    return [*argv, "--quiet", "--set", "data.max_eval_samples=8"]


def one_round(model: Path, out: Path, *extra: str) -> int:
    """Run :func:`one_round_argv`; its exit status."""
    return int(main(one_round_argv(model, out, *extra)))


def read(out: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """The run's summary, its one metrics line and its global state."""
    summary = json.loads((out / "summary.json").read_text())
    [row] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, row, load_file(out / "checkpoint" / "global.safetensors")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_every_method_tunes_every_decoder_family_sending_exactly_its_tensors(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path, family: str, method: str, capsys
) -> None:
    out = tmp_path / "run"
    code = one_round(tiny_decoder_dirs[family], out, "--method", method, *GENERATE)
    if (family, method) in REFUSED:
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and REFUSED[family, method] in err
        assert not out.exists()
        return
    assert code == 0
    summary, row, state = read(out)
    n = summary["trainable_params"]
    assert n == sum(t.numel() for t in state.values()) < summary["total_params"] or (
        method == "full" and n == summary["total_params"]
    )
    assert row["bytes_up"] == row["bytes_down"] == 2 * 4 * n  # two clients, fp32 tensors only
    assert summary["metric_name"] == "accuracy" and 0 <= summary["test_accuracy"] <= 1
    assert summary["test_perplexity"] > 1 and "val_loss" in row
    # it trained: the state moved (no weight decay: only gradients move it), and the
    # validation loss fell from the start's (one step of each client, so by a little)
    exp = prepare(run_config(out))
    start = extract(exp.params)
    assert any(not torch.equal(start[k], state[k]) for k in state), "nothing moved"
    before = evaluate(exp.model, exp.validation, 8, 0)["loss"]
    assert row["val_loss"] < before, (before, row["val_loss"])
    if method == "lora":
        adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state}
        assert adapted == LORA_TARGETS[family]  # peft's targets for the family


@pytest.mark.parametrize("method", ["lora", "prompt"])
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_decoder_classifies_with_a_head_on_its_last_token(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path, family: str, method: str
) -> None:
    out = tmp_path / "run"
    assert one_round(tiny_decoder_dirs[family], out, "--method", method) == 0
    summary, row, state = read(out)
    assert {"head.weight", "head.bias"} <= set(state) and state["head.weight"].shape == (2, 32)
    assert row["bytes_up"] == 2 * 4 * summary["trainable_params"]
    assert "test_perplexity" not in summary and 0 <= summary["test_macro_f1"] <= 1
    # the trained classifier's logits are its head on the last token's hidden state
    loaded = open_model(out, "last")
    ids = loaded.tokenizer(["a fine film, if long"], return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = loaded.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden[:, -ids.shape[1] :]  # (prompt tuning's virtual tokens come first)
        logits = loaded.model(ids, mask)
        assert torch.allclose(logits, loaded.model.head(hidden[:, -1]), atol=1e-6)
        assert not torch.allclose(logits, loaded.model.head(hidden.mean(1)), atol=1e-4)


def test_last_token_pooling_reads_the_last_real_token_left_or_right_padded(
    tiny_decoder_dirs: dict[str, Path], tiny_config
) -> None:
    model, tokenizer = build_model(tiny_config(model=str(tiny_decoder_dirs["gpt2"])), 2)
    assert isinstance(model, TextClassifier) and model.pooling == "last"
    assert tokenizer.pad_token == tokenizer.eos_token  # the tokenizer had no padding token
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [0, 0, 5, 6, 7, 8]])  # right-, then left-padded
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        pooled = model.embed(ids, mask)
        hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model.embed(ids[:1, :4], mask[:1, :4])
    assert torch.equal(pooled[0], hidden[0, 3]) and torch.equal(pooled[1], hidden[1, 5])
    assert torch.allclose(pooled[0], alone[0], atol=1e-6)  # pads after it change nothing
    assert not torch.allclose(pooled[0], hidden[0, 5])


def test_gradient_checkpointing_gives_the_same_gradients(
    tiny_decoder_dirs: dict[str, Path], tiny_config
) -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = tiny_config(
            model=str(tiny_decoder_dirs["llama"]),
            **{"data.objective": "generate", "train.gradient_checkpointing": checkpointing},
        )
        model, _ = build_model(cfg, 2)
        assert isinstance(model, CausalLM)
        model.train()
        ids = torch.arange(3, 15).reshape(2, 6)
        targets = ids.clone()
        targets[:, :3] = -100
        model.response_loss(ids, torch.ones_like(ids), targets).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_a_generative_objective_on_an_encoder_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    err = refused(one_round_argv(tiny_model_dir, tmp_path / "run", *GENERATE), capsys, tmp_path)
    assert "is a bidirectional encoder; a generative task needs a decoder" in err


def test_an_encoder_decoder_model_is_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    from transformers import AutoTokenizer, T5Config, T5Model

    path = tmp_path / "tiny-t5"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = T5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2
    )
    T5Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    for objective in ("classify", "generate"):
        flags = ("--set", f"data.objective={objective}")
        err = refused(one_round_argv(path, tmp_path / objective, *flags), capsys, tmp_path)
        assert "is not allowed: it is an encoder-decoder (t5)" in err


def test_quantization_is_refused_without_cuda(tiny_decoder_dirs, capsys) -> None:
    from helpers import refusal

    model = str(tiny_decoder_dirs["llama"])
    err = refusal(["--model", model, "--device", "cpu", "--set", "quantization=4bit"], capsys)
    assert err.endswith(
        "quantization = '4bit' is not allowed: none on device cpu: 4bit base weights need "
        "bitsandbytes and a CUDA device"
    )


@pytest.mark.gpu
def test_qlora_trains_fp32_lora_on_4bit_base_weights_sending_what_lora_sends(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (fedpet[qlora])")
    model = tiny_decoder_dirs["llama"]
    plain, quantized = tmp_path / "plain", tmp_path / "4bit"
    assert one_round(model, plain, *GENERATE, "--device", "cuda") == 0
    flags = ("--device", "cuda", "--set", "quantization=4bit", "--set", "train.precision=bf16")
    assert one_round(model, quantized, *GENERATE, *flags) == 0
    (_, row_plain, state_plain), (s_q, row_q, state_q) = read(plain), read(quantized)
    assert state_q.keys() == state_plain.keys() and row_q["bytes_up"] == row_plain["bytes_up"]
    assert s_q["peak_gpu_mb"] > 0 and s_q["test_perplexity"] > 1


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_llama_style_families_take_lora_on_their_attention_projections(
    tiny_decoder_dirs: dict[str, Path], tmp_path: Path, family: str
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    llama = tiny_decoder_dirs["llama"]
    tokenizer = AutoTokenizer.from_pretrained(llama)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), num_key_value_heads=1, intermediate_size=64, **sizes
    )
    torch.manual_seed(0)
    path = tmp_path / family
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    out = tmp_path / "run"
    assert one_round(path, out, *GENERATE) == 0
    summary, row, state = read(out)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state} == {"q_proj", "v_proj"}
    assert row["bytes_up"] == 2 * 4 * summary["trainable_params"]
