"""Prompts and responses as tokens: the chat template or the Alpaca layout, then the answer.

A prompt is rendered with the tokenizer's chat template when it has one (the prompt as the
user's turn, ready for the assistant's), else in the Alpaca layout. The response follows it,
ended by the end-of-sequence token, and only the response is trained on and scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedpet.data.batching import Encoded
from fedpet.data.splits import Split

ALPACA = "### Instruction:\n{prompt}\n\n### Response:\n"
"""The prompt layout for a tokenizer without a chat template (Taori et al., 2023)."""


def render(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """``prompt`` as the model reads it before its answer."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        assert isinstance(text, str)
        return text
    return ALPACA.format(prompt=prompt)


def end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a response: end of sequence, else the separator (BERT's vocab)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither an end-of-sequence nor a separator token")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts, after the begin-of-sequence token where there is one."""
    rendered = [render(tokenizer, p) for p in prompts]
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    bos, bos_text = tokenizer.bos_token_id, tokenizer.bos_token
    if bos is None:
        return list(ids)
    return [
        x if text.startswith(str(bos_text)) else [bos, *x]
        for x, text in zip(ids, rendered, strict=True)
    ]


def answer_ids(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of responses, each ended by :func:`end_id`."""
    end = end_id(tokenizer)
    return [[*x, end] for x in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]


def joined(prompt: list[int], answer: list[int], max_length: int) -> tuple[np.ndarray, int]:
    """Prompt then answer in at most ``max_length`` tokens, and where the answer starts.

    The answer keeps up to ``max_length - 1`` of its first tokens; the prompt gives up its
    first tokens, so that its end (the turn to answer) stays next to the answer.
    """
    answer = answer[: max_length - 1]
    prompt = prompt[-(max_length - len(answer)) :]
    return np.asarray(prompt + answer, dtype=np.int32), len(prompt)


def encode_generative(
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    max_length: int,
    options: Sequence[str] | None,
) -> Encoded:
    """Tokenize each prompt and response of a generative split once (see :func:`joined`).

    ``options``, the closed answer set, are tokenized as responses are, for scoring.
    """
    assert split.responses is not None, "a generative split holds responses"
    rows = [
        joined(p, a, max_length)
        for p, a in zip(
            prompt_ids(tokenizer, split.texts), answer_ids(tokenizer, split.responses), strict=True
        )
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id(tokenizer)
    choices = None
    if options is not None:
        choices = [np.asarray(x, dtype=np.int32) for x in answer_ids(tokenizer, options)]
    return Encoded(
        input_ids=[ids for ids, _ in rows],
        labels=split.labels,
        pad_id=int(pad),
        prompt_lengths=np.asarray([n for _, n in rows], dtype=np.int64),
        options=choices,
    )
