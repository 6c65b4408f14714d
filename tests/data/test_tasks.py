"""The packaged tasks load offline with the documented sizes, labels and seeded splits."""

import numpy as np
import pytest

from fedpet.config import DataConfig
from fedpet.data.splits import Split, seeded_split, stratified_subsample
from fedpet.data.tasks import load_task
from fedpet.errors import FedpetError


@pytest.mark.parametrize(
    "name,total,labels",
    [
        ("rotten_tomatoes", 12_752, ("rotten", "fresh")),
        ("tweet_sentiment", 37_243, ("negative", "neutral", "positive")),
        ("bbc_news", 2_127, ("business", "entertainment", "politics", "sports", "tech")),
    ],
)
def test_packaged_task_sizes_labels_and_disjoint_splits(name: str, total: int, labels) -> None:
    task = load_task(DataConfig(task=name, split_seed=0))
    sizes = [len(task.train), len(task.validation), len(task.test)]
    assert sum(sizes) == total
    assert sizes[0] == round(0.8 * total) and sizes[1] == round(0.1 * total)
    assert task.label_names == labels
    for split in (task.train, task.validation, task.test):
        assert set(np.unique(split.labels)) == set(range(len(labels)))
        assert all(isinstance(t, str) and t for t in split.texts[:50])
    train, val, test = set(task.train.texts), set(task.validation.texts), set(task.test.texts)
    assert not (train & val) and not (train & test) and not (val & test)


def test_split_seed_changes_the_split_and_is_repeatable() -> None:
    full = Split([f"t{i}" for i in range(100)], np.arange(100) % 2, [f"p{i}" for i in range(100)])
    a = seeded_split(full, 1)
    b = seeded_split(full, 1)
    c = seeded_split(full, 2)
    assert a[0].pairs == [t.replace("t", "p") for t in a[0].texts]
    assert [s.texts for s in a] == [s.texts for s in b]
    assert a[0].texts != c[0].texts
    assert [len(s) for s in a] == [80, 10, 10]


def test_stratified_subsample_keeps_label_shares() -> None:
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    idx = stratified_subsample(labels, 100, np.random.default_rng(0))
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert np.bincount(labels[idx]).tolist() == [70, 20, 10]


def test_unknown_task_is_one_clear_error() -> None:
    with pytest.raises(FedpetError, match=r"data\.task = 'imdb' is not allowed"):
        load_task(DataConfig(task="imdb"))


def test_train_fraction_and_max_train_samples_take_the_smaller(tmp_path) -> None:
    from fedpet.configure import build_config
    from fedpet.experiment import load_data

    def size(**kw: object) -> int:
        cfg = build_config({}, [("data.task", "bbc_news"), *kw.items()])
        task, clients, _ = load_data(cfg)
        assert sum(len(c) for c in clients) == len(task.train)
        return len(task.train)

    assert size() == 1702
    assert size(**{"data.train_fraction": 0.25}) == round(0.25 * 1702)
    assert size(**{"data.train_fraction": 0.25, "data.max_train_samples": 300}) == 300
    assert size(**{"data.train_fraction": 0.1, "data.max_train_samples": 300}) == 170
