"""User data files: formats, columns, labels, given splits, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import refused

from fedpet.cli import main
from fedpet.config import DataConfig
from fedpet.data.tasks import load_task
from fedpet.errors import FedpetError

ROWS = [
    (f"review number {i} is {'good' if i % 3 else 'bad'}", "pos" if i % 3 else "neg")
    for i in range(60)
]


def frame(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_loads_with_a_seeded_split_and_sorted_labels(tmp_path: Path, ext) -> None:
    path = write(frame(), tmp_path / f"data{ext}")
    task = load_task(DataConfig(task=f"file:{path}"))
    assert task.label_names == ("neg", "pos")
    assert [len(task.train), len(task.validation), len(task.test)] == [48, 6, 6]
    all_texts = task.train.texts + task.validation.texts + task.test.texts
    assert sorted(all_texts) == sorted(t for t, _ in ROWS)
    lookup = dict(ROWS)
    assert all(
        task.label_names[y] == lookup[t]
        for t, y in zip(task.train.texts, task.train.labels, strict=True)
    )


def test_custom_columns_pairs_and_integer_labels_in_numeric_order(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "q": [f"q{i}" for i in range(40)],
            "a": [f"a{i}" for i in range(40)],
            "y": [10 if i % 2 else 2 for i in range(40)],
        }
    )
    path = write(df, tmp_path / "pairs.jsonl")
    data = DataConfig(task=f"file:{path}", text_column="q", text_pair_column="a", label_column="y")
    task = load_task(data)
    assert task.label_names == ("2", "10")  # numeric order, not "10" < "2"
    assert task.train.pairs is not None
    assert all(p == "a" + t[1:] for t, p in zip(task.train.texts, task.train.pairs, strict=True))
    assert all(
        task.label_names[y] == ("10" if int(t[1:]) % 2 else "2")
        for t, y in zip(task.train.texts, task.train.labels, strict=True)
    )


def test_given_validation_and_test_files(tmp_path: Path) -> None:
    train = write(frame(), tmp_path / "train.csv")
    val = write(frame(ROWS[:5]), tmp_path / "val.csv")
    test = write(frame(ROWS[5:12]), tmp_path / "test.csv")
    task = load_task(
        DataConfig(task=f"file:{train}", validation_file=str(val), test_file=str(test))
    )
    assert [len(task.train), len(task.validation), len(task.test)] == [60, 5, 7]
    assert "given files" in task.split_rule


def raw(name: str, content: bytes):
    def make(directory: Path) -> Path:
        (directory / name).write_bytes(content)
        return directory / name

    return make


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d / "missing.csv", "does not exist"),
        (raw("empty.csv", b""), "is empty"),
        (
            lambda d: write(frame().rename(columns={"text": "body"}), d / "t.csv"),
            "no text column 'text'",
        ),
        (lambda d: write(frame().drop(columns="label"), d / "l.csv"), "no label column 'label'"),
        (raw("x.csv", b"text,label\nbad \xff\xfe byte,pos\n"), "is not UTF-8"),
        (raw("data.xlsx", b"x"), "unknown format"),
        (raw("header.csv", b"text,label\n"), "has no rows"),
        # an unquoted comma: pandas would take "a great" as an index and train on " film"
        (
            raw("commas.csv", b'text,label\n"fine, quoted",pos\na great, film,pos\nok,neg\n'),
            r"line 3 has 3 fields, but the header names 2; quote texts that hold commas",
        ),
        (raw("tabs.tsv", b"text\tlabel\na\ttab\tpos\n"), "line 2 has 3 fields"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, make, needle: str) -> None:
    path = make(tmp_path)
    with pytest.raises(FedpetError, match=needle) as info:
        load_task(DataConfig(task=f"file:{path}"))
    assert "\n" not in str(info.value)


def test_label_unseen_in_training_is_refused(tmp_path: Path) -> None:
    train = write(frame(), tmp_path / "train.csv")
    val = write(frame([("odd one", "meh"), *ROWS[:3]]), tmp_path / "val.csv")
    test = write(frame(ROWS[:3]), tmp_path / "test.csv")
    with pytest.raises(FedpetError, match=r"label\(s\) \['meh'\] that the training data lacks"):
        load_task(DataConfig(task=f"file:{train}", validation_file=str(val), test_file=str(test)))


def test_user_file_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = write(frame(), tmp_path / "mine.csv")
    out = tmp_path / "run"
    args = [
        "run",
        "--task",
        f"file:{path}",
        "--model",
        str(tiny_model_dir),
        "--clients",
        "4",
        "--clients-per-round",
        "2",
        "--rounds",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == f"file:{path}" and summary["rounds_completed"] == 1
    part = json.loads((out / "partition.json").read_text())
    assert part["labels"] == ["neg", "pos"] and part["split"]["train"] == 48
    assert np.isclose(sum(c["size"] for c in part["clients"]), 48)


def test_natural_partition_from_a_client_column(tmp_path: Path, capsys) -> None:
    df = frame()
    df["user"] = [f"u{i % 5}" for i in range(len(df))]
    path = write(df, tmp_path / "users.csv")
    out = tmp_path / "part"
    args = [
        "partition",
        "--task",
        f"file:{path}",
        "--partition",
        "natural",
        "--set",
        "data.client_column=user",
        "--out",
        str(out),
    ]
    assert main(args) == 0  # the number of clients comes from the data (default 100)
    report = json.loads((out / "partition.json").read_text())
    assert len(report["clients"]) == 5 and sum(c["size"] for c in report["clients"]) == 48
    assert [c["name"] for c in report["clients"]] == ["u0", "u1", "u2", "u3", "u4"]
    task = load_task(DataConfig(task=f"file:{path}", client_column="user"))
    assert task.train.groups is not None
    lookup = dict(zip(df["text"], df["user"], strict=True))
    assert all(lookup[t] == g for t, g in zip(task.train.texts, task.train.groups, strict=True))


def test_bad_data_file_from_the_command_line_is_exit_2_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"text,label\nbad \xff byte,pos\n")
    out = tmp_path / "run"
    err = refused(["run", "--task", f"file:{path}", "--out", str(out)], capsys, keep=tmp_path)
    assert "is not UTF-8" in err
    assert not out.exists()


def test_quoted_commas_keep_the_whole_text(tmp_path: Path) -> None:
    rows = [(f"a great, film number {i}", "pos" if i % 2 else "neg") for i in range(40)]
    path = write(frame(rows), tmp_path / "commas.csv")  # pandas quotes them
    task = load_task(DataConfig(task=f"file:{path}"))
    texts = task.train.texts + task.validation.texts + task.test.texts
    assert sorted(texts) == sorted(t for t, _ in rows)


def test_single_label_data_is_refused(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    one = write(frame([(f"review {i}", "pos") for i in range(60)]), tmp_path / "one.csv")
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model_dir), "--task", f"file:{one}", "--out", str(out)]
    err = refused([*args, "--clients", "2"], capsys, keep=tmp_path)
    assert not out.exists()
    assert "the training split holds a single label ['pos']; a classifier needs at least two" in err
    # two labels in training, but an evaluation split of one: its accuracy says nothing
    two = write(frame(), tmp_path / "two.csv")
    assert main([*args[:4], f"file:{two}", "--out", str(out), "--clients", "2",
                 "--set", "data.max_eval_samples=1"]) == 2  # fmt: skip
    assert "the validation split holds a single label" in capsys.readouterr().err
