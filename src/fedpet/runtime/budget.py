"""A communication budget per round (``federation.max_round_mb``): checked before, and kept.

Before a run, the round a plain FedAvg would send is computed from the trainable tensors'
shapes and the codecs (exact for fedavg: every sampled client gets and sends the whole
state); a plan over budget is refused before anything is written. After each round the
bytes it really sent (SecAgg+'s masks and key exchange included) are checked too, and a
round over budget stops the run once that round is checkpointed.
"""

from __future__ import annotations

from fedpet.codecs import get_codec
from fedpet.config import Config
from fedpet.errors import FedpetError
from fedpet.experiment import Experiment


def client_bytes(exp: Experiment) -> tuple[int, int]:
    """Bytes of the whole trainable state, up (``codec.up``) and down (``codec.down``)."""
    shapes = [tuple(p.shape) for p in exp.params.values()]
    up, down = (get_codec(spec).values for spec in (exp.cfg.codec.up, exp.cfg.codec.down))
    return sum(up.nbytes(s) for s in shapes), sum(down.nbytes(s) for s in shapes)


def check_plan(exp: Experiment) -> None:
    """Refuse a run whose planned round would send more than the budget."""
    cfg = exp.cfg
    budget = cfg.federation.max_round_mb
    if budget is None or cfg.centralized:
        return
    up, down = client_bytes(exp)
    k = cfg.federation.clients_per_round
    planned = k * (up + down)
    if planned > budget * 1e6:
        raise FedpetError(
            f"federation.max_round_mb = {budget} is not allowed for this run: a round sends "
            f"{planned / 1e6:,.3f} MB ({k} clients x ({up:,} up + {down:,} down) bytes of "
            f"method {cfg.method.name}'s {exp.trainable_params:,} trainable values); raise "
            "it, or sample fewer clients, pick a smaller codec or method"
        )


def check_round(cfg: Config, round_: int, sent: int) -> None:
    """Stop a run whose round sent (up and down) more than the budget."""
    budget = cfg.federation.max_round_mb
    if budget is None or cfg.centralized:
        return
    if sent > budget * 1e6:
        raise FedpetError(
            f"federation.max_round_mb = {budget}: round {round_} sent "
            f"{sent / 1e6:,.3f} MB, over budget; the run stopped with that round checkpointed"
        )
