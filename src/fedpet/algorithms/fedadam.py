"""FedAdam (Reddi et al., 2021): Adam's second moment on the server."""

from __future__ import annotations

import torch

from fedpet.algorithms.fedopt import AdaptiveServer


class FedAdam(AdaptiveServer):
    """``v = beta2 * v + (1 - beta2) * d**2``."""

    name = "fedadam"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Exponential moving average of the squared pseudo-gradient."""
        return self.config.beta2 * v + (1 - self.config.beta2) * d**2
