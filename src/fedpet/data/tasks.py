"""Task registry: a name maps to a loader of labelled texts in train/validation/test splits."""

from __future__ import annotations

from collections.abc import Callable

from fedpet.config import DataConfig
from fedpet.data.files import PREFIX, load_file_task
from fedpet.data.glue import GLUE, load_glue
from fedpet.data.instructions import generative_form, load_instruction_file
from fedpet.data.packaged import load_bbc_news, load_rotten_tomatoes, load_tweet_sentiment
from fedpet.data.splits import Task
from fedpet.errors import FedpetError

TASKS: dict[str, Callable[[int], Task]] = {
    "rotten_tomatoes": load_rotten_tomatoes,
    "tweet_sentiment": load_tweet_sentiment,
    "bbc_news": load_bbc_news,
}


def check_task(name: str) -> None:
    """Refuse a task that is neither packaged, GLUE, nor a ``file:PATH``."""
    if name not in TASKS and name not in GLUE and not name.startswith(PREFIX):
        raise FedpetError(
            f"data.task = {name!r} is not allowed: choose one of {sorted(TASKS)}, a GLUE "
            f"task ({', '.join(GLUE)}), or file:PATH for a CSV, TSV, JSONL or Parquet file"
        )


def load_task(data: DataConfig) -> Task:
    """Load the configured task (a registered name or ``file:PATH``).

    For ``data.objective = generate`` the task comes in its generative form
    (:mod:`fedpet.data.instructions`).
    """
    check_task(data.task)
    generate = data.objective == "generate"
    if data.task.startswith(PREFIX):
        if generate:
            return load_instruction_file(data.task, data)
        return load_file_task(data.task, data)
    task = load_glue(data.task, data) if data.task in GLUE else TASKS[data.task](data.split_seed)
    return generative_form(task) if generate else task
