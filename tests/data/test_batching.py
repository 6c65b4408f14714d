from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from fedpet.data.batching import collate, encode, length_sorted_batches, shuffled_batches
from fedpet.data.splits import Split
from fedpet.model import model_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2"))


def test_batches_pad_to_their_longest_example(tokenizer) -> None:
    split = Split(["a b", "a much longer text than that one", "c"], np.array([0, 1, 0]))
    data = encode(tokenizer, split, max_length=6)
    assert data.lengths.tolist() == [4, 6, 3]  # [CLS] a b [SEP]; truncated to 6; [CLS] c [SEP]
    assert data.token_type_ids is None
    batch = collate(data, np.array([0, 2]))
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["input_ids"][1, 3].item() == tokenizer.pad_token_id
    assert batch["labels"].tolist() == [0, 0]


def test_sentence_pairs_carry_segment_ids(tokenizer) -> None:
    split = Split(["a cat sat", "dogs"], np.array([1, 0]), ["on the mat", "run"])
    batch = collate(encode(tokenizer, split, max_length=32), np.array([0, 1]))
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tokenizer.sep_token_id) == 2
    first_sep = ids.index(tokenizer.sep_token_id)
    assert batch["token_type_ids"][0].tolist() == [0] * (first_sep + 1) + [1] * (
        len(ids) - first_sep - 1
    )
    assert batch["token_type_ids"][1, -1].item() == 0  # padding is segment 0


def test_epoch_orders_are_seeded_and_cover_every_index() -> None:
    idx = np.arange(10, 47)
    a = shuffled_batches(idx, 8, np.random.default_rng(3))
    b = shuffled_batches(idx, 8, np.random.default_rng(3))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(np.concatenate(a).tolist()) == idx.tolist()
    assert [len(x) for x in a] == [8, 8, 8, 8, 5]


def test_length_sorted_batches_group_similar_lengths(tokenizer) -> None:
    texts = ["w " * n for n in (9, 1, 5, 3)]
    data = encode(tokenizer, Split(texts, np.zeros(4, dtype=np.int64)), max_length=64)
    batches = length_sorted_batches(data, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0]]


def test_length_grouped_batches_cover_the_epoch_once_seeded_with_less_padding() -> None:
    from fedpet.data.batching import length_grouped_batches

    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    indices = np.arange(100, 900)  # a client's examples

    def padding(batches: list[np.ndarray]) -> int:
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)

    def grouped(seed: int) -> list[np.ndarray]:
        return length_grouped_batches(indices, lengths, 16, np.random.default_rng(seed), group=5)

    batches = grouped(1)
    assert sorted(np.concatenate(batches).tolist()) == indices.tolist()
    assert all(len(b) == 16 for b in batches)  # 800 examples: 50 full batches
    assert all(np.array_equal(x, y) for x, y in zip(batches, grouped(1), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(batches, grouped(2), strict=True))
    plain = shuffled_batches(indices, 16, np.random.default_rng(1))
    assert padding(batches) < padding(plain) / 3


def test_a_length_grouped_run_is_reproducible_and_trains_differently(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from helpers import run_argv
    from safetensors.torch import load_file

    from fedpet.cli import main

    grouped = ("--set", "train.group_by_length=true")
    runs = {"plain": ("--set", "train.group_by_length=false"), "grouped": grouped, "again": grouped}
    for name, flags in runs.items():
        assert main(run_argv(tiny_model_dir, tmp_path / name, *flags)) == 0
    a, b, c = (load_file(tmp_path / n / "checkpoint" / "global.safetensors") for n in runs)
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert not all(torch.equal(a[k], b[k]) for k in a)
