import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one thread in every test process and each process it starts, as Ray runs each ClientApp:
# in-process and Flower runs then sum floats in the same order (bitwise equal states), and
# scripts/check.sh's two pytest-xdist workers do not fight over two cores
os.environ["OMP_NUM_THREADS"] = "1"

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from transformers import AutoTokenizer, BertConfig, BertModel

from fedpet import launch
from fedpet.config import Config
from fedpet.configure import build_config, resolve
from fedpet.model import model_path

QUICK = os.environ.get("FEDPET_QUICK") == "1"  # scripts/check.sh --quick

# the full suite tries 100 examples per property, the quick loop 12
settings.register_profile("full", max_examples=100)
settings.register_profile("quick", max_examples=12)
settings.load_profile("quick" if QUICK else "full")

DEPLOYMENTS = "test_flower_deployment.py"
"""The slowest tests' file: Flower deployments (SuperLink, SuperNodes, ``flwr run``)."""

QUICK_RUNS = 4
"""The most runs an unmarked test may train in the quick loop (a study needs the mark)."""
QUICK_SECONDS = 60.0
"""The longest an unmarked test may take in the quick loop (the slowest take about 12 s)."""


@pytest.fixture(autouse=True)
def _quick_tests_stay_small(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """In the quick loop, a test not marked integration fails if it starts a process or
    trains more than :data:`QUICK_RUNS` runs (it fails even where a runner catches the
    error)."""
    if not QUICK or "integration" in request.keywords:
        yield
        return
    said: list[str] = []

    def no_process(self: subprocess.Popen, *args: object, **kwargs: object) -> None:
        said.append("it starts a process")
        raise AssertionError(said[-1])

    train, runs = launch.train, []

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        runs.append(1)
        if len(runs) > QUICK_RUNS:
            said.append(f"it trains more than {QUICK_RUNS} runs")
            raise AssertionError(said[-1])
        return train(*args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(launch, "train", counted)
    yield
    if said:
        pytest.fail(f"{said[0]}: mark it @pytest.mark.integration", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In the quick loop, a test not marked integration that runs too long fails."""
    report = yield
    slow = call.when == "call" and call.duration > QUICK_SECONDS
    if QUICK and slow and "integration" not in item.keywords and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} took {call.duration:.0f} s, more than the quick loop's "
            f"{QUICK_SECONDS:g} s: mark it @pytest.mark.integration"
        )
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, Flower's deployments first of all; GPU-marked tests skip, in one
    line, where torch sees no CUDA device.

    Started first, the slow tests (most of them waiting on processes: a deployment's on
    Flower's timeouts) overlap with the many quick ones on the other xdist worker instead
    of ending the suite on one.
    """
    items.sort(key=lambda item: ("integration" not in item.keywords, item.path.name != DEPLOYMENTS))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check.sh runs it)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with hidden size 32 and random weights, saved with MiniLM's tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_config(tiny_model_dir: Path, tmp_path: Path):
    """Build a resolved config on the tiny model and a small slice of rotten_tomatoes."""

    def make(**overrides: object) -> Config:
        base = {
            "model": str(tiny_model_dir),
            "out": str(tmp_path / "run"),
            "data": {"max_train_samples": 64, "max_length": 32},
            "federation": {"clients": 4, "clients_per_round": 2, "rounds": 1},
            "train": {"batch_size": 8, "eval_batch_size": 64},
        }
        return resolve(build_config(base, list(overrides.items())))

    return make


DECODER_FAMILIES = ("gpt2", "llama", "opt")
"""The decoder families the tests build: GPT-2, Llama (Mistral/Qwen2 share its layout), OPT."""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def decoder_tokenizer(family: str):
    """A byte-level BPE tokenizer of 1,000 tokens trained on packaged rotten_tomatoes text.

    It has an end-of-sequence token and no padding token, as GPT-2's and Llama's; the Llama
    one also begins sequences with <s> and has a chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fedpet.data.packaged import load_rotten_tomatoes

    special = ["<|endoftext|>"] if family != "llama" else ["<s>", "</s>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(load_rotten_tomatoes(0).train.texts[:4000], trainer)
    if family == "llama":
        return PreTrainedTokenizerFast(
            tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def decoder_model(family: str, vocab: int):
    """A 2-layer causal LM of hidden size 32 with random weights (Llama's embeddings untied)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128)
        )
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config)
    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
    )
    return OPTForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per family, a tiny random causal LM saved with its trained tokenizer."""
    dirs = {}
    for family in DECODER_FAMILIES:
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        tokenizer = decoder_tokenizer(family)
        decoder_model(family, len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[family] = path
    return dirs
