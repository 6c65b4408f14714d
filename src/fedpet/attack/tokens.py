"""Token precision, recall and F1 of a recovered text against the true one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenScores:
    """How much of a text an attack recovered, over sets of distinct token ids.

    Attributes
    ----------
    precision
        Share of the recovered tokens that are in the true text (0 when nothing was recovered).
    recall
        Share of the true text's tokens that were recovered.
    f1
        Their harmonic mean (0 when both are 0).
    """

    precision: float
    recall: float
    f1: float


def token_scores(recovered: Iterable[int], true: Iterable[int]) -> TokenScores:
    """Score the distinct ``recovered`` token ids against the distinct ``true`` ones."""
    got, want = set(recovered), set(true)
    if not got and not want:
        return TokenScores(1.0, 1.0, 1.0)
    hits = len(got & want)
    if not hits:
        return TokenScores(0.0, 0.0, 0.0)
    precision, recall = hits / len(got), hits / len(want)
    return TokenScores(precision, recall, 2 * precision * recall / (precision + recall))


def frequent_tokens(texts: Iterable[np.ndarray], exclude: set[int]) -> list[int]:
    """Token ids by how many texts hold them, most frequent first, ``exclude`` left out.

    Guessing a text's tokens as the first k of these, k as many as an attack recovered, is
    the prior an attack has to beat: frequent tokens ("the", ".") are in most texts.
    """
    counts = Counter(int(i) for ids in texts for i in set(ids.tolist()) - exclude)
    return [token for token, _ in counts.most_common()]
