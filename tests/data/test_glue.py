"""GLUE loaders on GLUE-format fixture files written here, for all seven tasks."""

import json
from pathlib import Path

import pytest

from fedpet.cli import main
from fedpet.config import DataConfig
from fedpet.data.glue import GLUE
from fedpet.data.tasks import load_task
from fedpet.errors import FedpetError

N_TRAIN, N_DEV = 200, 30


def rows(task: str, n: int, offset: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows in the GLUE distribution's layout for ``task``."""
    out = []
    for i in range(offset, offset + n):
        a, b, y = f"first text {i}", f"second text {i}", i % 2
        nli = ["entailment", "not_entailment"][y]
        if task == "sst2":
            out.append([a, str(y)])
        elif task == "cola":
            out.append(["src", str(y), "*" if y == 0 else "", a])
        elif task == "mrpc":
            out.append([str(y), str(i), str(i + 1), a, b])
        elif task in ("rte", "qnli"):
            out.append([str(i), a, b, nli])
        elif task == "qqp":
            out.append([str(i), str(i), str(i + 1), a, b, str(y)])
        else:
            out.append(
                [str(i), "fiction", a, b, "x", ["entailment", "neutral", "contradiction"][i % 3]]
            )
    header = {
        "sst2": ["sentence", "label"],
        "cola": None,
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "rte": ["index", "sentence1", "sentence2", "label"],
        "qnli": ["index", "question", "sentence", "label"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"],
    }[task]
    return header, out


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for task, spec in GLUE.items():
        folder = root / spec.folder
        folder.mkdir()
        for file, n, offset in (("train.tsv", N_TRAIN, 0), (spec.dev, N_DEV, 10_000)):
            header, body = rows(task, n, offset)
            if task == "mnli" and file == spec.dev:
                body.append(["9", "fiction", "no gold", "label here", "x", "-"])
            lines = ([header] if header else []) + body
            (folder / file).write_text("\n".join("\t".join(r) for r in lines) + "\n")
    return root


@pytest.mark.parametrize("task", sorted(GLUE))
def test_columns_pairs_split_sizes_labels_and_metric(glue_dir: Path, task: str) -> None:
    spec = GLUE[task]
    loaded = load_task(DataConfig(task=task, data_dir=str(glue_dir), split_seed=3))
    n_val = round(spec.val_fraction * N_TRAIN)
    assert len(loaded.validation) == max(1, n_val)
    assert len(loaded.train) == N_TRAIN - len(loaded.validation)
    assert len(loaded.test) == N_DEV  # the dev set; MNLI's unlabelled '-' row is dropped
    assert loaded.label_names == spec.labels
    assert loaded.metric == {"mrpc": "f1", "cola": "mcc"}.get(task, "accuracy")
    assert (loaded.train.pairs is not None) == (spec.pair is not None)
    assert set(loaded.train.labels.tolist()) == set(range(len(spec.labels)))
    for split in (loaded.train, loaded.validation, loaded.test):
        for k, text in enumerate(split.texts[:20]):
            i = int(text.rsplit(" ", 1)[1])
            expected = i % 3 if task == "mnli" else i % 2
            assert split.labels[k] == expected
            if split.pairs is not None:
                assert split.pairs[k] == f"second text {i}"
    assert not set(loaded.train.texts) & set(loaded.validation.texts)
    assert all(int(t.rsplit(" ", 1)[1]) >= 10_000 for t in loaded.test.texts)


def test_missing_glue_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FedpetError, match=r"RTE/train\.tsv' does not exist"):
        load_task(DataConfig(task="rte", data_dir=str(tmp_path)))


def test_offline_without_data_says_how_to_provide_it() -> None:
    with pytest.raises(FedpetError, match=r"pass --data-dir DIR holding SST-2/train\.tsv") as info:
        load_task(DataConfig(task="sst2"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("task,metric", [("rte", "accuracy"), ("cola", "mcc"), ("mrpc", "f1")])
def test_glue_runs_end_to_end_with_its_metric(
    glue_dir: Path, tiny_model_dir: Path, tmp_path: Path, task: str, metric: str
) -> None:
    out = tmp_path / task
    args = [
        "run",
        "--task",
        task,
        "--data-dir",
        str(glue_dir),
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
    assert summary["metric_name"] == metric
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["best_val_metric"] == line[f"val_{metric}"]
