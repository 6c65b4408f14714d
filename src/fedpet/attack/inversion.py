"""Gradient inversion: what one client's update reveals of the text it trained on.

Two recoveries, for one local step of plain gradient descent on one batch:

- when the word embeddings train, the rows of their update that moved are the tokens of the
  batch (:func:`embedding_rows`);
- otherwise gradient matching (DLG, Zhu et al. 2019; TAG, Deng et al. 2021): optimise
  continuous input embeddings until their gradient matches the observed one in L2 and cosine
  distance (:func:`match_gradients`), then take each position's nearest token
  (:func:`nearest_tokens`). The labels come from the head's bias (iDLG, Zhao et al. 2020:
  :func:`labels_from_bias`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedpet.model import TextClassifier
from fedpet.state import TrainableState

NOISE_FLOOR = 10.0  # a moved embedding row is this many times the median row norm


def embedding_rows(update: torch.Tensor) -> set[int]:
    """Token ids whose row of a word-embedding update moved: the tokens of the batch.

    Rows of tokens the batch lacks get no gradient; on an update that was quantized or
    noised on its way they are not exactly zero, so a row counts as moved when its norm is
    over ``NOISE_FLOOR`` times the median row norm (most tokens are absent from any batch).
    """
    norms = update.float().norm(dim=1)
    moved = norms > NOISE_FLOOR * norms.median()
    return {int(i) for i in torch.nonzero(moved).flatten()}


def labels_from_bias(bias_grad: torch.Tensor, batch: int) -> torch.Tensor:
    """The batch's labels read from the gradient of the head's bias.

    That gradient is the batch mean of ``softmax - one_hot``: negative only at the label for
    one example (exact). For more, each class's count is estimated as ``batch * (1/C - g)``,
    which assumes near-uniform predictions, rounded to sum to ``batch`` (largest remainder).
    """
    if batch == 1:
        return bias_grad.argmin().reshape(1)
    share = (1.0 / bias_grad.numel() - bias_grad.double()).clamp_min(0)
    share = batch * share / share.sum().clamp_min(1e-30)
    counts = share.floor().long()
    for c in torch.argsort(share - counts, descending=True)[: batch - int(counts.sum())]:
        counts[c] += 1
    return torch.repeat_interleave(torch.arange(bias_grad.numel()), counts)


def gradient_distance(grads: list[torch.Tensor], observed: list[torch.Tensor]) -> torch.Tensor:
    """TAG-style distance: squared L2 relative to the observed norm, plus 1 - cosine."""
    dot = sum((g * o).sum() for g, o in zip(grads, observed, strict=True))
    own = sum(g.pow(2).sum() for g in grads)
    seen = sum(o.pow(2).sum() for o in observed)
    assert isinstance(dot, torch.Tensor) and isinstance(own, torch.Tensor)
    assert isinstance(seen, torch.Tensor)
    l2 = (own - 2 * dot + seen) / seen.clamp_min(1e-30)
    cosine = dot / (own.sqrt() * seen.sqrt()).clamp_min(1e-30)
    return l2 + 1 - cosine


def match_gradients(
    model: TextClassifier,
    params: dict[str, nn.Parameter],
    observed: TrainableState,
    batch: dict[str, torch.Tensor],
    known: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
) -> torch.Tensor:
    """Input embeddings whose gradient on ``params`` matches ``observed``; (B, L, hidden).

    Parameters
    ----------
    model
        The attacked classifier in eval mode, loaded with an attention implementation that
        can be differentiated twice.
    params
        Its trainable parameters, at the values the client started from.
    observed
        The gradient the attacker read from the update, by parameter name.
    batch
        ``input_ids`` (only the ``known`` positions are used), ``attention_mask``, the
        inferred ``labels`` and, for sentence pairs, ``token_type_ids``.
    known
        (B, L) booleans: positions whose token the attacker knows (special tokens, padding);
        the others are optimised.
    steps, lr, seed
        Adam steps and learning rate; seed of the dummy embeddings' random start.
    """
    embeddings = model.word_embeddings()
    weight = embeddings.weight.detach()
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch["input_ids"].shape, weight.shape[1])
    dummy = (torch.randn(shape, generator=gen) * weight.std()).requires_grad_(True)
    keep = known.unsqueeze(-1)
    hook = embeddings.register_forward_hook(lambda _m, _i, out: torch.where(keep, out, dummy))
    names = list(params)
    targets = [observed[n] for n in names]
    optimizer = torch.optim.Adam([dummy], lr=lr)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            loss = nn.functional.cross_entropy(logits, batch["labels"])
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], create_graph=True, materialize_grads=True
            )
            gradient_distance(list(grads), targets).backward()
            optimizer.step()
    finally:
        hook.remove()
    return dummy.detach()


def nearest_tokens(embeds: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each vector's nearest row of the embedding matrix in cosine similarity: token ids."""
    unit = nn.functional.normalize(weight.float(), dim=-1)
    similarity: torch.Tensor = nn.functional.normalize(embeds.float(), dim=-1) @ unit.T
    return similarity.argmax(-1)
