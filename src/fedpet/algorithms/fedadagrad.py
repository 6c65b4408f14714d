"""FedAdagrad (Reddi et al., 2021): Adagrad's accumulated second moment on the server."""

from __future__ import annotations

import torch

from fedpet.algorithms.fedopt import AdaptiveServer


class FedAdagrad(AdaptiveServer):
    """``v = v + d**2``."""

    name = "fedadagrad"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The running sum of squared pseudo-gradients."""
        return v + d**2
