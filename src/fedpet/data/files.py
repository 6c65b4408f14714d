"""User data files as tasks: ``--task file:PATH`` with CSV, TSV, JSONL or Parquet.

Columns are named by ``data.text_column``, ``data.text_pair_column`` (optional) and
``data.label_column``. Validation and test come from ``data.validation_file`` and
``data.test_file`` when both are given, else from a seeded 80/10/10 split of the file.
Labels (strings or integers) are mapped once, in sorted order, from the training labels.
``data.client_column`` names the client of each row, for the ``natural`` partition.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fedpet.config import DataConfig
from fedpet.data.splits import Split, Task, seeded_split
from fedpet.errors import FedpetError

PREFIX = "file:"
FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """Read one data file by its extension; every problem is a one-line FedpetError."""
    if path.suffix not in FORMATS:
        raise FedpetError(
            f"data file {str(path)!r}: unknown format {path.suffix!r}; use one of {FORMATS}"
        )
    if not path.is_file():
        raise FedpetError(f"data file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise FedpetError(f"data file {str(path)!r} is empty")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        else:
            frame = _read_delimited(path)
    except UnicodeDecodeError as exc:
        raise FedpetError(
            f"data file {str(path)!r} is not UTF-8: byte {exc.start} cannot be decoded; "
            "re-save it as UTF-8"
        ) from None
    except (ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise FedpetError(f"data file {str(path)!r} cannot be read: {first}") from None
    if frame.empty:
        raise FedpetError(f"data file {str(path)!r} has no rows")
    return frame


def _read_delimited(path: Path) -> pd.DataFrame:
    """A CSV or TSV file whose first line names the columns; every row must fit under it.

    The header is read as a row, so that pandas never takes a row with an extra field (an
    unquoted comma in a text) for an index column and silently drops what precedes it.
    """
    tsv = path.suffix == ".tsv"
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    try:
        rows = pd.read_csv(
            path,
            sep="\t" if tsv else ",",
            encoding="utf-8",
            dtype=str,
            quoting=quoting,
            header=None,
        )
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found is None:
            raise
        fields, line, saw = found.groups()
        fix = "remove the tabs inside texts" if tsv else 'quote texts that hold commas ("a, b")'
        raise FedpetError(
            f"data file {str(path)!r}: line {line} has {saw} fields, but the header names "
            f"{fields}; {fix}"
        ) from None
    frame = rows.iloc[1:].reset_index(drop=True)
    frame.columns = [str(name) for name in rows.iloc[0]]
    return frame


def require_columns(frame: pd.DataFrame, path: Path, wanted: dict[str, str]) -> None:
    """Refuse a file that lacks one of the ``wanted`` columns (role -> column name).

    The error names the field that sets the role's column (``data.<role>_column``).
    """
    for role, column in wanted.items():
        if column not in frame.columns:
            have = ", ".join(map(str, frame.columns[:8]))
            raise FedpetError(
                f"data file {str(path)!r} has no {role} column {column!r} "
                f"(set data.{role if role != 'pair' else 'text_pair'}_column); it has: {have}"
            )


def _columns(frame: pd.DataFrame, path: Path, data: DataConfig) -> pd.DataFrame:
    wanted = {"text": data.text_column, "label": data.label_column}
    if data.text_pair_column:
        wanted["pair"] = data.text_pair_column
    if data.client_column:
        wanted["client"] = data.client_column
    require_columns(frame, path, wanted)
    picked = frame[list(wanted.values())].copy()
    picked.columns = list(wanted)
    if picked["label"].isna().any():
        row = int(np.flatnonzero(picked["label"].isna().to_numpy())[0])
        raise FedpetError(f"data file {str(path)!r}: row {row + 1} has no label")
    picked["label"] = picked["label"].astype(str).str.strip()
    for role in ("text", "pair"):
        if role in picked:
            picked[role] = picked[role].fillna("").astype(str)
    return picked


def _split(frame: pd.DataFrame, names: tuple[str, ...], path: Path) -> Split:
    unseen = sorted(set(frame["label"]) - set(names))
    if unseen:
        raise FedpetError(
            f"data file {str(path)!r} has label(s) {unseen[:3]} that the training data "
            f"lacks; training labels are {list(names)}"
        )
    index = {name: i for i, name in enumerate(names)}
    labels = frame["label"].map(index).to_numpy(dtype=np.int64)
    pairs = frame["pair"].tolist() if "pair" in frame else None
    groups = frame["client"].astype(str).to_numpy() if "client" in frame else None
    return Split(frame["text"].tolist(), labels, pairs, groups)


def labelled_rows(path: Path, data: DataConfig) -> tuple[list[str], list[str] | None, list[str]]:
    """Every row of a labelled file: texts, second texts (if configured) and label names."""
    frame = _columns(read_table(path), path, data)
    pairs = frame["pair"].tolist() if "pair" in frame else None
    return frame["text"].tolist(), pairs, frame["label"].tolist()


def load_file_task(name: str, data: DataConfig) -> Task:
    """The task ``file:PATH``: the file's rows as train (and validation/test) examples."""
    path = Path(name.removeprefix(PREFIX)).expanduser()
    train_frame = _columns(read_table(path), path, data)
    names = tuple(sorted(set(train_frame["label"]), key=_label_order))
    given = (data.validation_file, data.test_file)
    if any(given) and not all(given):
        raise FedpetError(
            "data.validation_file and data.test_file: give both, or neither for a seeded "
            "80/10/10 split of the file"
        )
    if data.validation_file and data.test_file:
        train = _split(train_frame, names, path)
        others = []
        for file in (data.validation_file, data.test_file):
            other = Path(file).expanduser()
            others.append(_split(_columns(read_table(other), other, data), names, other))
        rule = f"given files: train {path.name}, validation and test as configured"
        return Task(name, names, train, others[0], others[1], rule)
    train, val, test = seeded_split(_split(train_frame, names, path), data.split_seed)
    missing = sorted(set(range(len(names))) - set(train.labels.tolist()))
    if missing:
        raise FedpetError(
            f"data file {str(path)!r}: label(s) {[names[i] for i in missing]} have too few "
            "rows to reach the training split; add rows or give validation and test files"
        )
    rule = f"{path.name}: permutation(seed={data.split_seed}); 80/10/10"
    return Task(name, names, train, val, test, rule)


def _label_order(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order, then the rest alphabetically."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)
