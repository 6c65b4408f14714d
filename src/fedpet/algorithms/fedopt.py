"""Adaptive server optimizers (Reddi et al., 2021, Algorithm 2): the shared first moment.

The mean client update ``d`` is the pseudo-gradient. ``m = beta1 * m + (1 - beta1) * d``,
``v`` follows each optimizer's rule, and ``theta += server_lr * m / (sqrt(v) + tau)``.
``m`` starts at 0 and ``v`` at ``tau**2`` (the paper's ``v_{-1} >= tau**2``); there is no
bias correction, as in the paper. Both are server state, saved in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpet.algorithms.base import Aggregate, PlainAlgorithm
from fedpet.config import AlgorithmOptions, option
from fedpet.config.fields import above, within
from fedpet.state import TrainableState

MOMENT = within(0, 1, "a number in [0, 1)", high_open=True)


@dataclass(frozen=True)
class AdaptiveOptions(AlgorithmOptions):
    """The moments of FedAdam, FedYogi and FedAdagrad."""

    beta1: float = option(0.9, "first-moment decay of the adaptive server optimizers", MOMENT)
    beta2: float = option(0.99, "second-moment decay of FedAdam and FedYogi", MOMENT)
    tau: float = option(1e-3, "adaptivity: m / (sqrt(v) + tau); v starts at tau^2", above(0))


class AdaptiveServer(PlainAlgorithm):
    """Subclasses give ``name`` and the second-moment rule :meth:`second_moment`."""

    options = AdaptiveOptions
    config: AdaptiveOptions
    default_server_lr = 1e-2

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The new second moment from the old one and the pseudo-gradient."""
        raise NotImplementedError

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """``m.<name>`` zero and ``v.<name>`` at ``tau**2`` for every tensor."""
        tau2 = self.config.tau**2
        state = {f"m.{n}": torch.zeros_like(t) for n, t in global_state.items()}
        state.update({f"v.{n}": torch.full_like(t, tau2) for n, t in global_state.items()})
        return state

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """One adaptive step on the weighted mean update."""
        o = self.config
        new_global: TrainableState = {}
        new_state: TrainableState = {}
        for name, d in aggregate.mean().items():
            m = o.beta1 * server_state[f"m.{name}"] + (1 - o.beta1) * d
            v = self.second_moment(server_state[f"v.{name}"], d)
            new_global[name] = global_state[name] + self.server_lr * m / (v.sqrt() + o.tau)
            new_state[f"m.{name}"], new_state[f"v.{name}"] = m, v
        return new_global, new_state
