"""FedYogi (Reddi et al., 2021): Yogi's additive, sign-controlled second moment."""

from __future__ import annotations

import torch

from fedpet.algorithms.fedopt import AdaptiveServer


class FedYogi(AdaptiveServer):
    """``v = v - (1 - beta2) * d**2 * sign(v - d**2)``."""

    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Moves ``v`` towards ``d**2`` by a step proportional to ``d**2``."""
        d2 = d**2
        return v - (1 - self.config.beta2) * d2 * torch.sign(v - d2)
