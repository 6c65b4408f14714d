"""The stages a run's updates pass through, in order: a registry of stage factories.

A factory takes the run's config and the DP randomness of the party the stages run for
(server or client) and gives its stage, or None when the config does not ask for it. The
run's stages are the registered factories' stages in the order they were registered:
validation, then DP, then the user's (``register_stage``, or the ``fedpet.stages`` entry
points). Client halves run in this order before encoding; server halves too, so DP clips
only updates that passed the checks.
"""

from __future__ import annotations

from collections.abc import Callable

from fedpet.config import Config
from fedpet.privacy.randomness import Draws
from fedpet.privacy.stage import dp_stage
from fedpet.registry import Registry
from fedpet.stages import Report, Side, Stage, UpdateChecks

StageFactory = Callable[[Config, Draws], Stage | None]


def _validation(cfg: Config, draws: Draws) -> Stage:
    return UpdateChecks(cfg.federation.max_update_norm)


STAGES: Registry[StageFactory] = Registry(
    "stage", "fedpet.stages", {"validation": _validation, "dp": dp_stage}
)
"""Stage factories by name, in the order their stages run."""


def register_stage(name: str, factory: StageFactory) -> None:
    """Add a stage: ``factory(cfg, draws)`` gives it for a run, or None to leave it out."""
    STAGES.register(name, factory)


def stages_for(cfg: Config, draws: Draws) -> list[Stage]:
    """The run's stages, in order, for the party whose DP randomness is ``draws``."""
    made = (factory(cfg, draws) for factory in STAGES.values())
    return [stage for stage in made if stage is not None]


def reported(stages: list[Stage], size: int) -> Report:
    """What a client of ``size`` examples reports once its stages' client halves ran.

    The server plans a secure round's weights with it (a client that withholds its count
    weighs 1); the halves see an empty update, so only their report is asked.
    """
    report = Report(size, 0.0, size)
    for stage in stages:
        _, report = stage.client({}, report, Side(0, 0))
    return report
