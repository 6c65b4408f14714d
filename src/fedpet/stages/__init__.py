"""Round stages: steps with a client half and a server half on an update's way."""

from fedpet.stages.base import Arrival, Rejected, Report, Side, Stage
from fedpet.stages.validation import UpdateChecks

__all__ = ["Arrival", "Rejected", "Report", "Side", "Stage", "UpdateChecks"]
