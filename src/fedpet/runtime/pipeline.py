"""The stages a run's updates pass through, in order, from its config."""

from __future__ import annotations

from fedpet.config import Config
from fedpet.privacy.randomness import Draws
from fedpet.privacy.stage import DifferentialPrivacy
from fedpet.stages import ErrorFeedback, Stage, UpdateChecks


def stages_for(cfg: Config, draws: Draws) -> list[Stage]:
    """Validation first, then DP (when on), then error feedback (when on).

    ``draws`` is the DP randomness of the party the stages run for (server or client).

    Client halves run in this order before encoding, so error feedback sees the update DP
    clipped and noised; server halves too, so DP clips only updates that passed the checks.
    """
    stages: list[Stage] = [UpdateChecks(cfg.federation.max_update_norm)]
    if cfg.privacy.enabled:
        stages.append(DifferentialPrivacy(cfg, draws))
    if cfg.codec.feedback:
        stages.append(ErrorFeedback())
    return stages


def withholds_stats(stages: list[Stage]) -> bool:
    """Whether a stage keeps clients' example counts and losses from the server (DP)."""
    return any(stage.withholds_stats for stage in stages)


def secure_weight(stages: list[Stage], num_examples: int | None) -> int:
    """A client's weight in a secure sum: its example count, or 1 if the stages withhold it."""
    if withholds_stats(stages):
        return 1
    assert num_examples is not None, "a client that does not withhold it reports its count"
    return num_examples
