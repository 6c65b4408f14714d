"""What the data section must name: a task there is, a partition scheme there is."""

from __future__ import annotations

from fedpet.config import Config
from fedpet.data.files import PREFIX
from fedpet.data.partition import PARTITIONERS
from fedpet.data.tasks import check_task
from fedpet.errors import require

LABEL_SKEW = ("dirichlet", "dirichlet-classwise", "shards")
"""Partitions that skew labels: a generative task with open answers has none."""


def check_data(cfg: Config) -> None:
    """The task and the partition scheme exist."""
    check_task(cfg.data.task)
    partition = cfg.data.partition
    require(
        partition in PARTITIONERS,
        "data.partition",
        partition,
        "choose one of " + ", ".join(sorted(PARTITIONERS)),
    )


def check_objective(cfg: Config) -> None:
    """A generative task's limits: label skew needs labels, FedRS class logits, options.

    Open answers have no labels to skew, FedRS restricts class logits (a generative model
    has vocabulary logits), and each option of a closed answer set is named once.
    """
    d = cfg.data
    if d.objective != "generate":
        return
    open_answers = d.task.startswith(PREFIX) and d.options is None
    require(
        not (open_answers and d.partition in LABEL_SKEW),
        "data.partition",
        d.partition,
        "iid, quantity or natural for a generative task with open answers (it has no labels "
        "to skew; give data.options for a closed answer set)",
    )
    require(
        cfg.algorithm.fedrs is None,
        "algorithm.fedrs",
        cfg.algorithm.fedrs,
        "null with data.objective = generate (FedRS restricts class logits)",
    )
    if d.options is not None:
        require(
            len(set(d.options)) == len(d.options) >= 2,
            "data.options",
            list(d.options),
            "two or more different answers",
        )
