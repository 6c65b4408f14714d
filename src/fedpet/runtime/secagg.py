"""Secure aggregation on Flower: one fedpet round through Flower's SecAgg+ protocol.

The server learns only the cohort's example-weighted mean update (under DP, every update
weighs 1), never one client's: each client masks its quantized update with pairwise and
private masks that cancel in the sum (Bell et al., 2020). Flower implements the protocol
(``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on the client) for its legacy fit
messages; this module feeds them fedpet's payloads and turns the unmasked mean back into a
trainable state.

The masks: Flower draws each client's private seed with ``os.urandom`` and its pairwise
seeds by key agreement, but expands every seed through a generator seeded with 32 bits of
it (``pseudo_rand_gen``), which a server could search. fedpet's ClientApp and ServerApp
expand them with :func:`masks` instead (ChaCha20 keyed by the whole seed), on both sides.

What it costs: updates are clipped to ``secagg.clipping_range`` and quantized (2**22
levels), each client uploads 8-byte integers instead of 4-byte floats plus its key
exchange, and the server cannot check a single update (no norm bound, no robust statistic).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation import secaggplus_workflow
from flwr.serverapp import Grid

from fedpet.config import SecAggConfig
from fedpet.stages import Report
from fedpet.state import Schema, TrainableState

FITINS = "fitins.parameters"


def masks(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[Any]:
    """SecAgg+'s masks from a seed: values in ``[0, num_range - 1)``, as Flower draws them.

    The stream is ChaCha20's, keyed by SHA-256 of the whole seed, so a mask is as hard to
    guess as its seed (Flower's own generator keeps 32 bits of the seed).
    """
    key = hashlib.sha256(seed).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    drawn = []
    for shape in dimensions_list:
        raw = np.frombuffer(stream.update(bytes(8 * math.prod(shape))), dtype="<u8")
        drawn.append((raw % np.uint64(num_range - 1)).astype(np.int64).reshape(shape))
    return drawn


# the module, not the function of the same name its package exports
_client_side = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
for _side in (_client_side, secaggplus_workflow):  # the client's side, and the server's
    setattr(_side, "pseudo_rand_gen", masks)  # noqa: B010  # not exported, so not typed


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client mod, applied to the messages of a secure round only."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    """Whether a train message belongs to a secure round (it carries legacy fit instructions)."""
    return FITINS in msg.content.array_records


def read_instructions(msg: Message) -> tuple[bytes, dict[str, Scalar]]:
    """A secure round's train message: its payload and config (as a download's)."""
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    return ins.parameters.tensors[0], ins.config


def masked_reply(msg: Message, update: TrainableState, report: Report, kept: bool) -> Message:
    """The client's update in the form the SecAgg+ mod masks (it replaces the values).

    The mod scales the update by the client's weight (its example count, or 1 when it
    withholds it, under DP) before masking; the report travels unmasked as metrics, so
    under DP the reply carries none of it. ``kept`` says the client kept a new state.
    """
    arrays = [t.detach().to(torch.float32).numpy() for t in update.values()]
    metrics: dict[str, Scalar] = {"kept-state": 1} if kept else {}
    if report.num_examples is not None and report.loss is not None and report.seen is not None:
        metrics |= {"loss": report.loss, "examples": report.num_examples, "seen": report.seen}
    weight = int(report.weight)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), weight, metrics)
    return Message(content=compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serializes it."""
    return int(recorddict_to_proto(content).ByteSize())


class CountingGrid:
    """A grid that counts the bytes each way and the nodes that never answered."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.bytes_down = 0
        self.bytes_up = 0
        self.silent: set[int] = set()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Send, wait for the replies, and count both."""
        sent = list(messages)
        self.bytes_down += sum(content_bytes(m.content) for m in sent)
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        self.bytes_up += sum(content_bytes(r.content) for r in replies if not r.has_error())
        answered = {r.metadata.src_node_id for r in replies}
        self.silent |= {m.metadata.dst_node_id for m in sent} - answered
        return replies


class _Cohort(LegacyStrategy):
    """The legacy strategy SecAggPlusWorkflow drives: a fixed cohort and a sink for the sum."""

    def __init__(self, instructions: list[tuple[ClientProxy, FitIns]]) -> None:
        self.instructions = instructions
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def initialize_parameters(self, client_manager: Any) -> None:
        """The state comes from fedpet, not from the strategy."""

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The cohort fedpet sampled, each with its instructions."""
        return self.instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Any
    ) -> tuple[None, dict[str, Any]]:
        """Keep the results: each carries the unmasked mean and its client's count and loss."""
        self.results = list(results)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[Any]:
        """No client-side evaluation."""
        return []

    def aggregate_evaluate(
        self, server_round: int, results: Any, failures: Any
    ) -> tuple[None, dict[str, Any]]:
        """Nothing to aggregate."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        """The fedpet recorder evaluates."""


@dataclass
class SecureOutcome:
    """What a secure round reveals to the server, and what it cost."""

    mean: TrainableState | None
    """The weighted mean update of the clients in ``replies``; None if unmasking failed.

    The weights are example counts, or 1 under DP."""
    replies: dict[int, Report] = field(default_factory=dict)
    """Node id -> the report of each client whose masked update is in the sum."""
    kept: bool = False
    """Whether the clients in the sum kept a new state."""
    silent: set[int] = field(default_factory=set)
    bytes_up: int = 0
    bytes_down: int = 0


def secure_round(
    grid: Grid,
    options: SecAggConfig,
    downloads: dict[int, tuple[bytes, dict[str, Scalar]]],
    round_: int,
    layout: Schema,
    max_weight: float,
    timeout: float,
) -> SecureOutcome:
    """Train the clients of ``downloads`` and unmask their mean.

    ``downloads`` maps node ids to a payload and its config. ``max_weight`` bounds a
    client's weight (it scales the quantization).
    """
    counting = CountingGrid(grid)
    instructions: list[tuple[ClientProxy, FitIns]] = []
    for node, (payload, config) in downloads.items():
        ins = FitIns(Parameters([payload], tensor_type="fedpet"), config)
        instructions.append((GridClientProxy(node, grid, run_id=0), ins))
    cohort = _Cohort(instructions)
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=cohort)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: round_}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(
        num_shares=options.shares,
        reconstruction_threshold=options.threshold,
        max_weight=max_weight,
        clipping_range=options.clipping_range,
        timeout=timeout,
    )
    workflow(cast(Grid, counting), context)
    outcome = SecureOutcome(
        mean=_unmasked_mean(cohort.results, layout),
        silent=counting.silent,
        bytes_up=counting.bytes_up,
        bytes_down=counting.bytes_down,
    )
    for proxy, res in cohort.results:
        loss, examples, seen = (res.metrics.get(k) for k in ("loss", "examples", "seen"))
        report = Report()
        if examples is not None and loss is not None and seen is not None:
            report = Report(
                int(cast(int, examples)), float(cast(float, loss)), int(cast(int, seen))
            )
        outcome.replies[int(proxy.node_id)] = report
        outcome.kept |= bool(res.metrics.get("kept-state"))
    return outcome


def _unmasked_mean(
    results: list[tuple[ClientProxy, FitRes]], layout: Schema
) -> TrainableState | None:
    """The mean every result carries after unmasking, shaped by ``layout``; None if absent."""
    if not results:
        return None
    arrays = parameters_to_ndarrays(results[0][1].parameters)
    sizes = [int(np.prod(shape)) for _, shape in layout]
    if [a.size for a in arrays] != sizes:
        return None
    return {
        name: torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape))
        for (name, shape), a in zip(layout, arrays, strict=True)
    }
