import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from hypothesis import settings
from transformers import AutoTokenizer, BertConfig, BertModel

from fedpet.config import Config
from fedpet.configure import build_config, resolve
from fedpet.model import model_path

# the full suite tries 100 examples per property; scripts/check.sh --quick sets "quick"
settings.register_profile("full", max_examples=100)
settings.register_profile("quick", max_examples=12)
settings.load_profile(os.environ.get("FEDPET_HYPOTHESIS", "full"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """GPU-marked tests skip, in one line, where torch sees no CUDA device."""
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
