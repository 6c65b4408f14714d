"""The stages a run's updates pass through, in order, from its config."""

from __future__ import annotations

from fedpet.config import Config
from fedpet.privacy.stage import DifferentialPrivacy
from fedpet.stages import ErrorFeedback, Stage, UpdateChecks


def stages_for(cfg: Config) -> list[Stage]:
    """Validation first, then DP (when on), then error feedback (when on).

    Client halves run in this order before encoding, so error feedback sees the update DP
    clipped and noised; server halves too, so DP clips only updates that passed the checks.
    """
    stages: list[Stage] = [UpdateChecks(cfg.federation.max_update_norm)]
    if cfg.privacy.enabled:
        stages.append(DifferentialPrivacy(cfg))
    if cfg.codec.feedback:
        stages.append(ErrorFeedback())
    return stages
