"""Generative tasks: instruction files (Alpaca/Dolly layout) and classification as text.

An instruction file (``--task file:PATH --set data.objective=generate``) holds an
instruction, an optional input and a response per row, in the columns
``data.instruction_column``, ``data.input_column`` and ``data.response_column``;
``data.client_column`` names each row's client for the ``natural`` partition.
``data.options`` declares a closed answer set, which every response must belong to.
Any classification task (packaged, GLUE or a labelled file) also comes in a generative
form: the prompt names the labels and holds the text, and the response is the label's name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from fedpet.config import DataConfig
from fedpet.data.files import PREFIX, load_file_task, read_table, require_columns
from fedpet.data.splits import Split, Task, seeded_split
from fedpet.errors import FedpetError


def classification_prompt(labels: tuple[str, ...], text: str, pair: str | None) -> str:
    """The instruction that asks for one of ``labels`` for a text (or a pair of texts)."""
    body = f"Text: {text}" if pair is None else f"Text 1: {text}\nText 2: {pair}"
    return f"Answer with one of: {', '.join(labels)}.\n\n{body}"


def generative_form(task: Task) -> Task:
    """A classification task asked as text: the answer is the label's name."""

    def asked(split: Split) -> Split:
        pairs: list[str | None] = [*split.pairs] if split.pairs else [None] * len(split)
        prompts = [
            classification_prompt(task.label_names, t, p)
            for t, p in zip(split.texts, pairs, strict=True)
        ]
        answers = [task.label_names[int(i)] for i in split.labels]
        return Split(prompts, split.labels, None, split.groups, answers)

    return dataclasses.replace(
        task,
        train=asked(task.train),
        validation=asked(task.validation),
        test=asked(task.test),
        metric="accuracy",
        generative=True,
    )


def instruction_prompt(instruction: str, given: str) -> str:
    """An instruction, then its input where there is one."""
    return f"{instruction}\n\n{given}" if given.strip() else instruction


def _instructions(frame: pd.DataFrame, path: Path, data: DataConfig) -> Split:
    wanted = {"instruction": data.instruction_column, "response": data.response_column}
    if data.client_column:
        wanted["client"] = data.client_column
    require_columns(frame, path, wanted)

    def text(column: str) -> list[str]:
        return [str(x) for x in frame[column].fillna("")]

    given_column = data.input_column
    present = given_column is not None and given_column in frame.columns
    given = text(str(given_column)) if present else [""] * len(frame)
    prompts = [
        instruction_prompt(i, g) for i, g in zip(text(data.instruction_column), given, strict=True)
    ]
    responses = [r.strip() for r in text(data.response_column)]
    labels = np.zeros(len(frame), dtype=np.int64)
    if data.options is not None:
        index = {option: k for k, option in enumerate(data.options)}
        unknown = sorted({r for r in responses if r not in index})
        if unknown:
            raise FedpetError(
                f"data file {str(path)!r} has response(s) {unknown[:3]} outside data.options "
                f"= {list(data.options)}; every response of a closed answer set is an option"
            )
        labels = np.asarray([index[r] for r in responses], dtype=np.int64)
    groups = frame[data.client_column].astype(str).to_numpy() if data.client_column else None
    return Split(prompts, labels, None, groups, responses)


def load_instruction_file(name: str, data: DataConfig) -> Task:
    """The generative task ``file:PATH``: instructions and responses, or labelled rows.

    A file with no response column but the label column is asked as text
    (:func:`generative_form`). Validation and test are as for a labelled file: the given
    files, or a seeded 80/10/10 split.
    """
    path = Path(name.removeprefix(PREFIX)).expanduser()
    frame = read_table(path)
    if data.response_column not in frame.columns and data.label_column in frame.columns:
        return generative_form(load_file_task(name, data))
    train = _instructions(frame, path, data)
    options = tuple(data.options or ())
    metric = "accuracy" if options else "token_accuracy"
    if data.validation_file and data.test_file:
        val, test = (
            _instructions(read_table(Path(f).expanduser()), Path(f), data)
            for f in (data.validation_file, data.test_file)
        )
        rule = f"given files: train {path.name}, validation and test as configured"
    else:
        train, val, test = seeded_split(train, data.split_seed)
        rule = f"{path.name}: permutation(seed={data.split_seed}); 80/10/10"
    return Task(name, options, train, val, test, rule, metric, generative=True)
