"""Tokenize a split once; form padded batches per step (dynamic padding, no fixed length)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpet.data.splits import Split


@dataclass(frozen=True)
class Encoded:
    """Token ids of every example of a split (unpadded) and their labels.

    For sentence pairs, also the segment ids where the tokenizer gives them (BERT does,
    RoBERTa and DistilBERT do not). For a generative task each example is its prompt's
    tokens followed by its response's: ``prompt_lengths`` says where the response starts,
    and ``options`` holds the token ids of each answer of a closed answer set.
    """

    input_ids: list[np.ndarray]
    labels: np.ndarray
    pad_id: int
    token_type_ids: list[np.ndarray] | None = None
    prompt_lengths: np.ndarray | None = None
    options: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: np.ndarray) -> Encoded:
        """The examples at ``indices``, in that order."""

        def pick(rows: list[np.ndarray] | None) -> list[np.ndarray] | None:
            return None if rows is None else [rows[i] for i in indices]

        ids = pick(self.input_ids)
        assert ids is not None
        prompts = None if self.prompt_lengths is None else self.prompt_lengths[indices]
        types = pick(self.token_type_ids)
        return Encoded(ids, self.labels[indices], self.pad_id, types, prompts, self.options)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each example."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def encode(
    tokenizer: PreTrainedTokenizerBase, split: Split, max_length: int, chunk: int = 1024
) -> Encoded:
    """Tokenize every text once, truncated to ``max_length`` tokens.

    Texts go through the tokenizer ``chunk`` at a time and their ids are kept as compact
    int32 arrays, so memory grows with the tokens, not with Python lists of them.
    """
    ids: list[np.ndarray] = []
    segments: list[np.ndarray] = []
    pairs = split.pairs is not None
    for start in range(0, len(split.texts), chunk):
        end = start + chunk
        batch = tokenizer(
            split.texts[start:end],
            split.pairs[start:end] if split.pairs is not None else None,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=pairs and "token_type_ids" in tokenizer.model_input_names,
        )
        ids.extend(np.asarray(x, dtype=np.int32) for x in batch["input_ids"])
        segments.extend(np.asarray(x, dtype=np.int8) for x in batch.get("token_type_ids", []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, split.labels, int(pad), segments or None)


def collate(
    data: Encoded, indices: np.ndarray, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """A batch padded to its longest example, on ``device`` (None: the CPU).

    Holds input_ids, attention_mask and labels, and token_type_ids for sentence pairs. A
    generative batch also holds ``targets``: the ids with prompt and padding positions set
    to :data:`~fedpet.generative.lm.IGNORE` (-100), so that only responses are scored.
    """
    rows = [data.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), data.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(data.labels[indices]),
    }
    if data.token_type_ids is not None:
        segments = np.zeros((len(rows), width), dtype=np.int64)
        for i, j in enumerate(indices):
            segments[i, : len(data.token_type_ids[j])] = data.token_type_ids[j]
        batch["token_type_ids"] = torch.from_numpy(segments)
    if data.prompt_lengths is not None:
        targets = np.where(mask == 1, ids, -100)
        for i, j in enumerate(indices):
            targets[i, : data.prompt_lengths[j]] = -100
        batch["targets"] = torch.from_numpy(targets)
    if device is None or device.type == "cpu":
        return batch
    return {k: v.to(device) for k, v in batch.items()}


def shuffled_batches(
    indices: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch over ``indices`` in a seeded random order, cut into batches."""
    order = rng.permutation(indices)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def length_grouped_batches(
    indices: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: int = 50,
) -> list[np.ndarray]:
    """One epoch over ``indices`` in seeded batches of similar length (less padding).

    As Hugging Face Trainer's ``group_by_length``: a seeded random order is cut into
    mega-batches of ``group`` batches, each sorted by length (longest first) and cut into
    batches; the batches are then shuffled, so the epoch's order stays random and seeded.
    ``lengths`` holds every example's token count (indexed by the values of ``indices``).
    """
    order = rng.permutation(indices)
    mega = group * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def length_sorted_batches(data: Encoded, batch_size: int) -> list[np.ndarray]:
    """All examples in batches of similar length: the cheapest order for evaluation."""
    order = np.argsort(data.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
