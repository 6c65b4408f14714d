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
