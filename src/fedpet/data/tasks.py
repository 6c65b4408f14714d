"""Task registry: a name maps to a loader of labelled texts in train/validation/test splits."""

from __future__ import annotations

from collections.abc import Callable

from fedpet.data.packaged import load_bbc_news, load_rotten_tomatoes, load_tweet_sentiment
from fedpet.data.splits import Task
from fedpet.errors import FedpetError

TASKS: dict[str, Callable[[int], Task]] = {
    "rotten_tomatoes": load_rotten_tomatoes,
    "tweet_sentiment": load_tweet_sentiment,
    "bbc_news": load_bbc_news,
}


def load_task(name: str, split_seed: int) -> Task:
    """Load a registered task by name, split with ``split_seed``."""
    if name not in TASKS:
        raise FedpetError(f"data.task = {name!r} is not allowed: choose one of {sorted(TASKS)}")
    return TASKS[name](split_seed)
