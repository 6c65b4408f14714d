"""What the data section must name: a task there is, a partition scheme there is."""

from __future__ import annotations

from fedpet.config import Config
from fedpet.data.partition import PARTITIONERS
from fedpet.data.tasks import check_task
from fedpet.errors import require


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
