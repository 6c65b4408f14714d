"""What the data section must name: a task there is, a partition scheme there is."""

from __future__ import annotations

from fedpet.config import Config
from fedpet.data.files import PREFIX
from fedpet.data.partition import PARTITIONERS
from fedpet.data.splits import Task
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
    """A generative task's limits: FedRS restricts class logits, options are a file's.

    A generative model has vocabulary logits, not class logits; a packaged or GLUE task's
    answers are its label names; each option of a closed answer set is named once.
    """
    d = cfg.data
    if d.objective != "generate":
        return
    require(
        cfg.algorithm.fedrs is None,
        "algorithm.fedrs",
        cfg.algorithm.fedrs,
        "null with data.objective = generate (FedRS restricts class logits)",
    )
    if d.options is not None:
        require(
            d.task.startswith(PREFIX),
            "data.options",
            list(d.options),
            f"null for task {d.task!r}: its answers are its label names",
        )
        require(
            len(set(d.options)) == len(d.options) >= 2,
            "data.options",
            list(d.options),
            "two or more different answers",
        )


def check_skew(task: Task, partition: str) -> None:
    """Refuse a label-skew partition of a task without labels (open generative answers)."""
    require(
        bool(task.label_names) or partition not in LABEL_SKEW,
        "data.partition",
        partition,
        "iid, quantity or natural for a generative task with open answers (it has no labels "
        "to skew; give data.options for a closed answer set)",
    )
