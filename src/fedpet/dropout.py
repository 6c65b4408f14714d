"""Dropout keyed by the client, the step, the call and the element: a client's own stream.

During local training every dropout mask is drawn from the training client's stream: an
element is kept or dropped by a hash of (the client's seed, the local step, which dropout
call of the step it is, the element's index in each dimension). The mask of an element
therefore depends neither on how far its batch is padded (padding only adds indices at the
end of a dimension) nor on which other clients train in the same batched pass, and a cohort
of clients trained together (``federation.parallel_clients``) draws exactly the masks each
client draws alone.

:func:`keyed` routes ``torch.nn.functional.dropout`` (which every ``nn.Dropout`` module and
transformers' eager attention call) through the stream while local training runs; outside
it, and in evaluation, dropout is torch's own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

MASK = 0x7FFFFFFF
"""Keys and hashes are 31-bit values held in int32 tensors (fast, vectorised integer ops)."""
# odd multipliers; a product's low 31 bits do not depend on how int32 wraps it
_M1, _M2 = 0x7FEB352D, 0x046CA68B


def mix(h: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
    """A 31-bit integer hash of ``h`` combined with ``c`` (int32 tensors of 31-bit values)."""
    h = (h ^ c) & MASK
    h = h ^ (h >> 16)
    h = (h * _M1) & MASK
    h = h ^ (h >> 15)
    h = (h * _M2) & MASK
    return h ^ (h >> 16)


class Stream:
    """The dropout streams of one client, or of a cohort whose batches are stacked row-wise.

    ``seeds`` holds each client's key (31-bit values, int32), on the device of the tensors
    it drops (no copy in every call). A batch holds ``rows`` rows of
    each client in turn (None: one client, the whole batch): the first dimension of every
    tensor dropped is the batch's.
    """

    def __init__(self, seeds: torch.Tensor) -> None:
        self.seeds = seeds
        self.rows: int | None = None
        self.step = 0
        self.calls = 0

    def start_step(self, step: int, rows: int | None = None) -> None:
        """Key the next masks by local step ``step`` (from 0), counting calls from 0."""
        self.step, self.rows, self.calls = step, rows, 0

    def keep(self, shape: Sequence[int], p: float, device: torch.device) -> torch.Tensor:
        """The next call's mask: True where an element of a tensor of ``shape`` is kept.

        Each row is keyed by its client's key and its index among that client's rows; each
        other dimension by the element's index in it.
        """
        keys = mix(mix(self.seeds, self.step), self.calls)
        self.calls += 1
        threshold = round(p * 2**31)
        if not shape:
            return keys[0] >= threshold
        row = torch.arange(shape[0], device=device, dtype=torch.int32)
        rows = self.rows or shape[0]
        h = mix(keys[row // rows], row % rows)
        for size in shape[1:]:
            h = mix(h.unsqueeze(-1), torch.arange(size, device=device, dtype=torch.int32))
        return h >= threshold


def seed_tensor(*seeds: int) -> torch.Tensor:
    """The stream keys of ``seeds``: their low 31 bits, as an int32 tensor."""
    return torch.tensor([s & MASK for s in seeds], dtype=torch.int32)


_ACTIVE: list[Stream] = []
_TORCH_DROPOUT = F.dropout
_TORCH_ATTENTION = F.scaled_dot_product_attention


def _dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    if not _ACTIVE or not training or p == 0.0:
        return _TORCH_DROPOUT(input, p, training, inplace)
    if p == 1.0:
        return input * 0.0
    keep = _ACTIVE[-1].keep(input.shape, p, input.device)
    return input * keep.to(input.dtype) * (1.0 / (1.0 - p))


def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention``; with dropout, its math with the keyed dropout."""
    if not _ACTIVE or dropout_p == 0.0:
        return _TORCH_ATTENTION(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    if enable_gqa:
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    scores = query @ key.transpose(-2, -1) * (scale or query.size(-1) ** -0.5)
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return _dropout(scores.softmax(-1), dropout_p) @ value


@contextmanager
def keyed(stream: Stream) -> Iterator[Stream]:
    """Draw every training dropout mask from ``stream`` inside the block.

    Both ``torch.nn.functional.dropout`` and the dropout of
    ``torch.nn.functional.scaled_dot_product_attention`` (computed by its math, the softmax
    of the scores, when it drops) draw from it.
    """
    _ACTIVE.append(stream)
    F.dropout = _dropout
    F.scaled_dot_product_attention = _attention
    try:
        yield stream
    finally:
        _ACTIVE.pop()
        if not _ACTIVE:
            F.dropout = _TORCH_DROPOUT
            F.scaled_dot_product_attention = _TORCH_ATTENTION
