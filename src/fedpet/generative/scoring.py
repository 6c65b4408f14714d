"""Held-out scores of a causal LM: response loss and perplexity, option and exact-match accuracy.

Every example is scored on its response tokens only. For a closed answer set each example is
also answered twice: by the option of highest log-likelihood after its prompt (the
multiple-choice protocol of MMLU and lm-evaluation-harness, summed over the option's tokens
and its end token), and by a greedy generation, right when it reproduces the reference
response token for token.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedpet.data.batching import Encoded, collate, length_sorted_batches
from fedpet.devices import autocast
from fedpet.generative.lm import IGNORE, CausalLM
from fedpet.metrics import classification_metrics


def padded(
    rows: list[np.ndarray], starts: list[int], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and targets scoring each row from ``starts[i]`` on."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full_like(ids, IGNORE)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.from_numpy(row.astype(np.int64))
        mask[i, : len(row)] = 1
        targets[i, start : len(row)] = ids[i, start : len(row)]
    return ids.to(device), mask.to(device), targets.to(device)


def sequence_logprobs(
    model: CausalLM,
    rows: list[np.ndarray],
    starts: list[int],
    pad_id: int,
    precision: str,
) -> torch.Tensor:
    """Summed log-probability of each row's tokens from ``starts[i]`` on, given the rest."""
    device = next(model.parameters()).device
    ids, mask, targets = padded(rows, starts, pad_id, device)
    with autocast(device, precision):
        losses, _ = model.token_losses(ids, mask, targets)
    owner = (targets[:, 1:] != IGNORE).nonzero(as_tuple=True)[0]
    totals = torch.zeros(len(rows), device=device).index_add_(0, owner, losses.float())
    return -totals.cpu()


def prompt_of(data: Encoded, i: int) -> np.ndarray:
    """Example ``i``'s prompt tokens."""
    assert data.prompt_lengths is not None
    return data.input_ids[i][: data.prompt_lengths[i]]


@torch.inference_mode()
def option_scores(model: CausalLM, data: Encoded, batch_size: int, precision: str) -> np.ndarray:
    """Log-likelihood of every option after every prompt: shape (examples, options)."""
    assert data.options is not None
    k = len(data.options)
    rows, starts = [], []
    for i in range(len(data)):
        prompt = prompt_of(data, i)
        rows += [np.concatenate([prompt, option]) for option in data.options]
        starts += [len(prompt)] * k
    order = np.argsort([len(r) for r in rows], kind="stable")
    scores = np.empty(len(rows))
    for lo in range(0, len(rows), batch_size):
        take = order[lo : lo + batch_size]
        batch = sequence_logprobs(
            model, [rows[j] for j in take], [starts[j] for j in take], data.pad_id, precision
        )
        scores[take] = batch.numpy()
    return scores.reshape(len(data), k)


@torch.inference_mode()
def greedy_matches(model: CausalLM, data: Encoded, batch_size: int, precision: str) -> np.ndarray:
    """Whether the greedy continuation of each prompt is its reference response, exactly."""
    device = next(model.parameters()).device
    matches = np.zeros(len(data), dtype=bool)
    for idx in length_sorted_batches(data, batch_size):
        rows = [prompt_of(data, int(i)).astype(np.int64) for i in idx]
        starts = [len(r) for r in rows]
        refs = [data.input_ids[i][n:] for i, n in zip(idx, starts, strict=True)]
        for _ in range(max(len(ref) for ref in refs)):
            ids, mask, _ = padded(rows, [0] * len(rows), data.pad_id, device)
            with autocast(device, precision):
                hidden = model.hidden(ids, mask)
            last = mask.sum(1) - 1
            nxt = model.lm_head(hidden[torch.arange(len(rows), device=device), last])
            chosen = nxt.argmax(-1).cpu().numpy()
            rows = [np.append(r, c) for r, c in zip(rows, chosen, strict=True)]
        for i, row, start, ref in zip(idx, rows, starts, refs, strict=True):
            matches[i] = np.array_equal(row[start : start + len(ref)], ref)
    return matches


@torch.inference_mode()
def evaluate_generative(
    model: CausalLM, data: Encoded, batch_size: int, precision: str = "fp32"
) -> dict[str, float]:
    """Loss, perplexity and token accuracy on the responses.

    Where the task has a closed answer set (``data.options``), also the option accuracy and
    the exact match of greedy generations.
    """
    model.eval()
    device = next(model.parameters()).device
    loss, hits, tokens = 0.0, 0, 0
    for idx in length_sorted_batches(data, batch_size):
        batch = collate(data, idx, device)
        with autocast(device, precision):
            losses, hit = model.token_losses(
                batch["input_ids"], batch["attention_mask"], batch["targets"]
            )
        loss += float(losses.float().sum())
        hits += int(hit.sum())
        tokens += len(losses)
    mean = loss / max(1, tokens)
    metrics = {
        "loss": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "token_accuracy": hits / max(1, tokens),
    }
    if data.options is not None:
        chosen = option_scores(model, data, batch_size, precision).argmax(1)
        metrics.update(classification_metrics(chosen, data.labels, len(data.options)))
        metrics["exact_match"] = float(greedy_matches(model, data, batch_size, precision).mean())
    return metrics
