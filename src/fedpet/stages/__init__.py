"""Round stages: steps with a client half and a server half on an update's way."""

from fedpet.stages.base import Arrival, ClientSide, Rejected, Stage
from fedpet.stages.feedback import ErrorFeedback
from fedpet.stages.validation import UpdateChecks

__all__ = ["Arrival", "ClientSide", "ErrorFeedback", "Rejected", "Stage", "UpdateChecks"]
