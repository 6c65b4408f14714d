"""The FL algorithm protocol: a client half (hooks into local training) and a pure server half."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fedpet.config import AlgorithmOptions, Config
from fedpet.methods.lora import corrections
from fedpet.state import TrainableState, subtract, zeros_like


class ClientHook(Protocol):
    """Adjusts one client's local training: its logits (FedRS) or its loss (FedProx, SCAFFOLD).

    Each step computes ``loss(cross_entropy(logits(model(batch)), labels), params)``.
    """

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the task loss is computed from, given the model's."""
        ...

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """The loss to minimise given the task loss."""
        ...


class PlainTraining:
    """The identity hook: local training minimises the task loss alone.

    Hooks that change only one of the two derive from it for the other.
    """

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the logits unchanged."""
        return logits

    def loss(self, task_loss: torch.Tensor, params: dict[str, nn.Parameter]) -> torch.Tensor:
        """Return the task loss unchanged."""
        return task_loss


class Aggregate:
    """Streaming weighted sum of client updates: a round never holds every update at once.

    Robust statistics (a median) need every update; only then, with ``keep_updates``, are
    they kept, at the cost of one trainable state per client in memory.

    The sum takes the names and shapes of the first update added.

    Parameters
    ----------
    keep_updates
        Also keep each update and its weight, in order, in :attr:`updates` and
        :attr:`weights`.
    population
        Clients in the federation, sampled or not (SCAFFOLD averages its control over them).
    """

    def __init__(self, keep_updates: bool = False, population: int = 0) -> None:
        self.population = population
        self.weighted_sum: TrainableState = {}
        self.total_weight = 0.0
        self.num_clients = 0
        self.keep_updates = keep_updates
        self.updates: list[TrainableState] = []
        self.weights: list[float] = []

    def add(self, delta: TrainableState, weight: float, clients: int = 1) -> None:
        """Fold in one client's update with its weight (its number of local examples).

        With ``clients`` > 1, ``delta`` is the weighted mean of that many updates and
        ``weight`` their total weight: all that secure aggregation reveals.
        """
        if clients > 1 and self.keep_updates:
            raise ValueError("a mean of several updates cannot be kept as one update")
        if not self.weighted_sum:
            self.weighted_sum = zeros_like(delta)
        for name, acc in self.weighted_sum.items():
            acc.add_(delta[name], alpha=weight)
        self.total_weight += weight
        self.num_clients += clients
        if self.keep_updates:
            self.updates.append(delta)
            self.weights.append(weight)

    def stacked(self) -> dict[str, torch.Tensor]:
        """Per tensor name, the kept updates stacked along a new first (client) dimension."""
        if not self.updates:
            raise ValueError("no client update was kept (keep_updates=True) or aggregated")
        return {name: torch.stack([u[name] for u in self.updates]) for name in self.updates[0]}

    def mean(self) -> TrainableState:
        """The weighted mean update."""
        if self.total_weight <= 0:
            raise ValueError("no client update was aggregated")
        return {n: t / self.total_weight for n, t in self.weighted_sum.items()}


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs of the rest of the config; generic checks refuse the rest.

    Attributes
    ----------
    method
        The method it works on (``lora``), or None for any.
    optimizer
        The local optimizer it assumes (``sgd``), or None for any.
    constant_schedule
        A constant local learning rate.
    unclipped_gradients
        No local gradient clipping (``train.max_grad_norm: null``).
    """

    method: str | None = None
    optimizer: str | None = None
    constant_schedule: bool = False
    unclipped_gradients: bool = False


class Algorithm(Protocol):
    """An FL algorithm: one object owning both halves.

    ``server_update`` is pure: ``(global_state, server_state, aggregate) ->
    (global_state, server_state)``, with no hidden state on the object. ``keeps_updates``
    asks the runtime for an :class:`Aggregate` that keeps every update. ``needs`` says
    what it needs of the config, ``allows_dp`` and ``allows_secure_aggregation`` whether
    client-level DP and secure aggregation keep their guarantees with it, ``shares_base``
    whether a round's clients train on the same base weights (``federation.parallel_clients``
    trains them together); ``options`` is its options class (``algorithm.<field>`` in the
    config).

    A round: the server sends client ``k`` ``client_view(download(global, server), k)``; the
    client trains the model part with ``client_hook(received, client_state)`` and sends the
    first half of ``client_update(...)``, keeping the second as its new state; the server
    aggregates ``server_view(download, update, k)`` and calls ``server_update``.
    """

    @property
    def name(self) -> str:
        """Registry key (``--algorithm``)."""
        ...

    @property
    def options(self) -> type[AlgorithmOptions]:
        """The algorithm's options class."""
        ...

    @property
    def keeps_updates(self) -> bool:
        """Whether the server needs every update of a round, not their sum."""
        ...

    @property
    def needs(self) -> Needs:
        """What the algorithm needs of the config."""
        ...

    @property
    def allows_dp(self) -> bool:
        """Whether client-level DP keeps its guarantee with it."""
        ...

    @property
    def allows_secure_aggregation(self) -> bool:
        """Whether it needs nothing but the sum of the updates as sent."""
        ...

    @property
    def shares_base(self) -> bool:
        """Whether a round's clients train on the same base weights (so can train together)."""
        ...

    def check(self, cfg: Config) -> None:
        """Refuse what the algorithm's own options do not allow with the rest of ``cfg``."""
        ...

    def client_info(self, client: int) -> dict[str, Any]:
        """What the algorithm assigns client ``client`` (``partition.json`` records it)."""
        ...

    def download(
        self, global_state: TrainableState, server_state: TrainableState
    ) -> TrainableState:
        """What the server sends each sampled client."""
        ...

    def client_view(self, state: TrainableState, client: int) -> TrainableState:
        """The part of a state with the download's names and shapes that ``client`` holds."""
        ...

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """A client's checked update (of its view's shapes) as the server aggregates it."""
        ...

    def client_update(
        self,
        received: TrainableState,
        trained: TrainableState,
        client_state: TrainableState,
        steps: int,
        lrs: dict[str, float],
        num_examples: int,
    ) -> tuple[TrainableState, TrainableState]:
        """The update to send and the client's new state, after ``steps`` local steps.

        ``lrs`` is each trainable tensor's learning rate; ``num_examples`` the client's.
        """
        ...

    def trainable(self, name: str) -> bool:
        """Whether the algorithm trains and sends this parameter of the method's set."""
        ...

    def resync(self, view: TrainableState, synced: bool) -> TrainableState:
        """What of a client's view it is sent.

        ``synced``: the client holds its state from the round before (it was aggregated
        then), so it needs only what changed since (FLoRA's last stack, not the whole
        merge).
        """
        ...

    def bases(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """The base corrections a client trains on, from what it received and holds."""
        ...

    def local_start(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """Where a client's local training starts from what it received and holds.

        Its update is still taken against ``received`` (HetLoRA's pruned ranks start at
        zero, so the update takes them there).
        """
        ...

    def trains(self, name: str, round_: int) -> bool:
        """Whether clients train and send this shared tensor in round ``round_``.

        A tensor they do not train they hold fixed at what they received: it is neither
        stepped by the local optimizer nor in the update (RoLoRA's frozen factor, FedSVD's A).
        """
        ...

    def personal(self, name: str, head: bool) -> bool:
        """Whether this trained tensor (``head``: of the task head) stays with each client.

        A personal tensor is never sent nor aggregated: the algorithm sees only the shared
        ones, and each client keeps its own copy in its state.
        """
        ...

    @property
    def personal_copy(self) -> bool:
        """Whether each client also trains a copy of the whole state of its own (Ditto)."""
        ...

    def personal_training(self, received: TrainableState) -> ClientHook:
        """The hook that trains a client's own copy, for a client that received ``received``."""
        ...

    def client_hook(self, received: TrainableState, client_state: TrainableState) -> ClientHook:
        """The hook for a client that received ``received`` and holds ``client_state``."""
        ...

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """Server state before round 1 (e.g. zero momenta); empty if none."""
        ...

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """New global and server state from the round's aggregate."""
        ...


class PlainAlgorithm:
    """Base of algorithms with plain local training and no server state (FedAvg, robust ones).

    Subclasses give ``name``, ``keeps_updates`` and ``server_update``, and an ``options``
    class of their own if they take options beyond :class:`~fedpet.config.AlgorithmOptions`.
    """

    name: ClassVar[str]
    options: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions
    default_server_lr = 1.0
    keeps_updates: ClassVar[bool] = False
    needs: ClassVar[Needs] = Needs()
    allows_dp: ClassVar[bool] = True
    allows_secure_aggregation: ClassVar[bool] = True
    shares_base: ClassVar[bool] = True
    personal_copy: ClassVar[bool] = False

    def __init__(self, config: AlgorithmOptions) -> None:
        self.config = config

    def check(self, cfg: Config) -> None:
        """Nothing beyond :attr:`needs`."""

    def client_info(self, client: int) -> dict[str, Any]:
        """Nothing: every client is alike."""
        return {}

    @property
    def server_lr(self) -> float:
        """The configured server learning rate, or the algorithm's default."""
        lr = self.config.server_lr
        return self.default_server_lr if lr is None else lr

    def trainable(self, name: str) -> bool:
        """Every parameter the method trains."""
        return True

    def trains(self, name: str, round_: int) -> bool:
        """Every round, every tensor it trains."""
        return True

    def resync(self, view: TrainableState, synced: bool) -> TrainableState:
        """All of it."""
        return view

    def bases(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """The corrections it received (none, unless the algorithm merges into the base)."""
        return corrections(received)

    def local_start(self, received: TrainableState, client_state: TrainableState) -> TrainableState:
        """What it received."""
        return received

    def personal(self, name: str, head: bool) -> bool:
        """None: every trained tensor is shared."""
        return False

    def personal_training(self, received: TrainableState) -> ClientHook:
        """Plain training (used only where :attr:`personal_copy` is set)."""
        return PlainTraining()

    def download(
        self, global_state: TrainableState, server_state: TrainableState
    ) -> TrainableState:
        """The global state."""
        return global_state

    def client_view(self, state: TrainableState, client: int) -> TrainableState:
        """All of it: every client holds the whole state."""
        return state

    def server_view(
        self, download: TrainableState, update: TrainableState, client: int
    ) -> TrainableState:
        """The update itself."""
        return update

    def client_hook(self, received: TrainableState, client_state: TrainableState) -> ClientHook:
        """No change to local training."""
        return PlainTraining()

    def client_update(
        self,
        received: TrainableState,
        trained: TrainableState,
        client_state: TrainableState,
        steps: int,
        lrs: dict[str, float],
        num_examples: int,
    ) -> tuple[TrainableState, TrainableState]:
        """The trained state minus the received one; no client state."""
        return subtract(trained, received), {}

    def init_server_state(self, global_state: TrainableState) -> TrainableState:
        """No server state."""
        return {}

    def server_update(
        self, global_state: TrainableState, server_state: TrainableState, aggregate: Aggregate
    ) -> tuple[TrainableState, TrainableState]:
        """New global and server state from the round's aggregate: each algorithm's own."""
        raise NotImplementedError(f"algorithm {self.name!r} gives no server_update")
