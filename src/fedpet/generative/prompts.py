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
from fedpet.errors import FedpetError

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


MIN_PROMPT_SHARE = 2
"""A prompt keeps at least ``max_length // MIN_PROMPT_SHARE`` tokens (all of it, if shorter).

A response longer than the rest gives up its end, so that the model never learns an answer
without its question."""


def prompt_floor(max_length: int) -> int:
    """The fewest tokens a prompt keeps of ``max_length`` (all of its own, if it has fewer)."""
    return max_length // MIN_PROMPT_SHARE


def joined(
    prompt: list[int], answer: list[int], max_length: int, reserve: int | None = None
) -> tuple[np.ndarray, int]:
    """Prompt then answer in at most ``max_length`` tokens, and where the answer starts.

    A prompt gives up its first tokens, so that its end (the turn to answer) stays next to
    the answer. How many it keeps:

    - with ``reserve`` (a closed answer set's longest option, which every answer fits in):
      ``max_length - reserve``, the same whatever the answer, so that neither the prompt
      nor where the answer starts says which answer follows;
    - without (open answers): at least :func:`prompt_floor` tokens; the answer keeps its
      first tokens in the rest, and the prompt takes whatever the answer leaves.
    """
    if reserve is None:
        answer = answer[: max_length - min(len(prompt), prompt_floor(max_length))]
        room = max_length - len(answer)
    else:
        assert len(answer) <= reserve, "every answer of a closed set fits the reserve"
        room = max_length - reserve
    prompt = prompt[max(0, len(prompt) - room) :]
    return np.asarray(prompt + answer, dtype=np.int32), len(prompt)


def option_reserve(options: list[list[int]], max_length: int) -> int:
    """The tokens kept for the answer of a closed answer set: its longest option's.

    Refused in one line when the prompt would keep fewer than :func:`prompt_floor` tokens.
    """
    longest = max(len(x) for x in options)
    if max_length - longest < prompt_floor(max_length):
        raise FedpetError(
            f"data.max_length = {max_length} is not allowed: the longest option takes "
            f"{longest} tokens (with the end token), and a prompt keeps at least half of "
            f"max_length; use at least {2 * longest}"
        )
    return longest


def encode_generative(
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    max_length: int,
    options: Sequence[str] | None,
) -> Encoded:
    """Tokenize each prompt and response of a generative split once (see :func:`joined`).

    ``options``, the closed answer set, are tokenized as responses are, for scoring; the
    prompts of such a split are cut to leave room for the longest option.
    """
    assert split.responses is not None, "a generative split holds responses"
    choices = None if options is None else answer_ids(tokenizer, options)
    reserve = None if choices is None else option_reserve(choices, max_length)
    rows = [
        joined(p, a, max_length, reserve)
        for p, a in zip(
            prompt_ids(tokenizer, split.texts), answer_ids(tokenizer, split.responses), strict=True
        )
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id(tokenizer)
    return Encoded(
        input_ids=[ids for ids, _ in rows],
        labels=split.labels,
        pad_id=int(pad),
        prompt_lengths=np.asarray([n for _, n in rows], dtype=np.int64),
        options=None if choices is None else [np.asarray(x, dtype=np.int32) for x in choices],
    )
