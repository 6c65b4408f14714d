"""Every client's own test split: how the global model and its personal model score there.

With ``data.client_test_fraction`` each client holds out part of its examples
(:func:`~fedpet.data.partition.hold_out`). After the rounds the recorder validates (and
after the last), the runtime's :data:`Scorer` scores the global state on every client's
split and, where the algorithm personalises, the client's own model: the global state
with the client's personal tensors (or Ditto's copy) from its committed state. A client
never sampled, or one whose state is gone, scores with what it would start from: the
global state. The recorder writes the scores to ``clients.csv`` and their mean, 10th
percentile and worst to the round's line and the summary.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpet.algorithms import Algorithm
from fedpet.client import evaluate
from fedpet.experiment import Experiment
from fedpet.runtime.client_store import ClientStore, SavedState
from fedpet.state import TrainableState

CLIENTS_CSV = "clients.csv"


@dataclass(frozen=True)
class ClientScore:
    """A client's task metric on its local test split: global model's, personal model's."""

    shared: float
    personal: float | None = None


Scorer = Callable[[TrainableState, Mapping[int, int]], dict[int, ClientScore]]
"""Scores every client from the global state and each client's committed round."""
Personal = Callable[[int], TrainableState]
"""A client's personal tensors (empty where it has none)."""


def personalises(exp: Experiment, algorithm: Algorithm) -> bool:
    """Whether the algorithm leaves each client a model of its own."""
    return bool(exp.personal) or algorithm.personal_copy


def score(exp: Experiment, client: int) -> float:
    """The task metric of the model as it stands on ``client``'s local test split."""
    train = exp.cfg.train
    data = exp.train.subset(exp.client_tests[client])
    num_labels = exp.task.num_labels
    metrics = evaluate(exp.model, data, train.eval_batch_size, num_labels, train.precision)
    return metrics[exp.task.metric]


def score_clients(
    exp: Experiment, global_state: TrainableState, clients: list[int], personal: Personal | None
) -> dict[int, ClientScore]:
    """Score ``clients``: the global state on each, then each client's own model.

    ``personal`` gives a client's personal tensors (None: the algorithm has none). The
    model is left holding ``global_state``.
    """
    exp.load_state(global_state)
    shared = {k: score(exp, k) for k in clients}
    if personal is None:
        return {k: ClientScore(shared[k]) for k in clients}
    scores = {}
    for k in clients:
        own = personal(k)
        if own:
            exp.load_state({**global_state, **own})
            scores[k] = ClientScore(shared[k], score(exp, k))
        else:  # it starts from the global state: its own model is the global one
            scores[k] = ClientScore(shared[k], shared[k])
    exp.load_state(global_state)
    return scores


def own_tensors(store: ClientStore, client: int, round_: int) -> TrainableState:
    """The personal tensors of ``client``'s state committed in ``round_`` (empty if none)."""
    return SavedState.of(store.load(client, round_) or {}).personal


def store_scorer(exp: Experiment, algorithm: Algorithm, store: ClientStore) -> Scorer:
    """The simulation's scorer: one pass over the clients, each one's state read in turn."""

    def scorer(
        global_state: TrainableState, committed: Mapping[int, int]
    ) -> dict[int, ClientScore]:
        def personal(k: int) -> TrainableState:
            return own_tensors(store, k, committed.get(k, 0))

        mine = personal if personalises(exp, algorithm) else None
        return score_clients(exp, global_state, list(range(len(exp.clients))), mine)

    return scorer


def client_rows(exp: Experiment, scores: Mapping[int, ClientScore]) -> list[dict[str, Any]]:
    """``clients.csv``'s rows: sizes, the test split's label counts, both models' metric."""
    metric, labels = exp.task.metric, exp.train.labels
    rows = []
    for k, tests in enumerate(exp.client_tests):
        counts = np.bincount(labels[tests], minlength=exp.task.num_labels)
        s = scores.get(k)
        rows.append(
            {
                "client": k,
                "train_examples": len(exp.clients[k]),
                "test_examples": len(tests),
                "test_label_counts": " ".join(str(c) for c in counts),
                f"global_{metric}": "" if s is None else s.shared,
                f"personal_{metric}": "" if s is None or s.personal is None else s.personal,
            }
        )
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text (a header from the first row's keys)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def spread(values: list[float]) -> dict[str, float]:
    """Unweighted mean over clients, 10th percentile (numpy's linear) and the worst."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "p10": float(np.percentile(v, 10)), "worst": float(v.min())}


def score_figures(scores: Mapping[int, ClientScore]) -> dict[str, float]:
    """``client_test_*`` of the global model and ``personal_test_*`` where there are any."""
    figures = {
        f"client_test_{k}": v for k, v in spread([s.shared for s in scores.values()]).items()
    }
    personal = [s.personal for s in scores.values() if s.personal is not None]
    if personal:
        figures |= {f"personal_test_{k}": v for k, v in spread(personal).items()}
    return figures


def read_scores(path: Path, metric: str) -> dict[int, ClientScore]:
    """The scores ``clients.csv`` at ``path`` holds (clients without one left out)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    scores = {}
    for row in rows:
        shared, personal = row[f"global_{metric}"], row[f"personal_{metric}"]
        if shared:
            scores[int(row["client"])] = ClientScore(
                float(shared), float(personal) if personal else None
            )
    return scores
