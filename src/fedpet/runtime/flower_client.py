"""The Flower ClientApp's side: a node trains the client it holds through the client half.

A train message carries the client's download (:mod:`fedpet.runtime.messages`); the node
answers with :meth:`~fedpet.runtime.client_half.ClientHalf.run` on a backbone loaded once
per process. An evaluate message asks for the client's scores on its local test split
(:mod:`fedpet.runtime.client_tests`). The client's own state stays on the node
(:func:`node_store`): in the directory its node config names as ``state-dir``, which
survives a SuperNode's restart and a resumed run, or else in Flower's per-node context
state, which lives as long as the Flower run does.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load

from fedpet.config import Config, to_dict
from fedpet.experiment import prepare
from fedpet.runtime.client_half import ClientHalf
from fedpet.runtime.client_store import ClientStore, DiskStore, VersionedStore, state_bytes
from fedpet.runtime.client_tests import own_tensors, personalises, score_clients
from fedpet.runtime.messages import (
    from_record,
    number,
    read_download,
    reply_metrics,
    to_record,
)
from fedpet.runtime.secagg import is_secure, masked_reply, read_instructions, secure_mod
from fedpet.state import TrainableState

_CLIENTS: dict[str, ClientHalf] = {}  # per process: the backbone and data, loaded once


def cached_client(cfg: Config) -> ClientHalf:
    """The client half for ``cfg`` in this process, its experiment prepared on first use."""
    key = repr(to_dict(cfg))
    if key not in _CLIENTS:
        _CLIENTS.clear()
        _CLIENTS[key] = ClientHalf.of(prepare(cfg))
    return _CLIENTS[key]


class RecordStore(VersionedStore[str]):
    """Client states in a Flower ``RecordDict`` (a node's context state), by round."""

    PREFIX = "fedpet-client-"

    def __init__(self, records: RecordDict) -> None:
        self.records = records

    def _versions(self, client: int) -> dict[int, str]:
        mine = f"{self.PREFIX}{client}-r"
        return {int(k.removeprefix(mine)): k for k in self.records if k.startswith(mine)}

    def _read(self, handle: str) -> TrainableState:
        return load(from_record(self.records.array_records[handle]))

    def _drop(self, handle: str) -> None:
        del self.records[handle]

    def save(self, client: int, round_: int, state: TrainableState) -> None:
        """Keep the version as the safetensors bytes of ``state``."""
        self.records[f"{self.PREFIX}{client}-r{round_}"] = to_record(state_bytes(state))


def node_store(context: Context, run: str) -> ClientStore:
    """Where this node keeps its clients' states for run ``run``.

    Its node config's ``state-dir`` (one folder per run inside), else its context state.
    """
    folder = context.node_config.get("state-dir")
    if folder:
        return DiskStore(Path(str(folder)) / run)
    return RecordStore(context.state)


def train_reply(cfg: Config, msg: Message, context: Context) -> Message:
    """Train the client (partition) a train message names; reply with its encoded update.

    In a secure round the reply goes through Flower's SecAgg+ mod, which masks it: the
    client sends its update after its stages' client halves (DP's noise share), unencoded.
    """
    half = cached_client(cfg)
    if is_secure(msg):
        payload, config = read_instructions(msg)
        download, round_, client, run = read_download(payload, config)
        reply = half.run(download, round_, client, node_store(context, run), secure=True)
        assert reply.masked is not None, "a secure round leaves the update to the masks"
        return masked_reply(msg, reply.masked, reply.report, reply.kept)
    payload = from_record(msg.content.array_records["arrays"])
    download, round_, client, run = read_download(payload, msg.content.config_records["config"])
    reply = half.run(download, round_, client, node_store(context, run))
    content = RecordDict({"arrays": to_record(reply.payload), "metrics": reply_metrics(reply)})
    return Message(content=content, reply_to=msg)


def evaluate_reply(cfg: Config, msg: Message, context: Context) -> Message:
    """Score the client an evaluate message names on its local test split.

    The message carries the global state (exact) and the round of the client's committed
    state; the client's own model is the global state with its personal tensors.
    """
    half = cached_client(cfg)
    config = msg.content.config_records["config"]
    client, run = int(number(config["client"])), str(config["run"])
    committed = int(number(config["committed"]))
    global_state = load(from_record(msg.content.array_records["arrays"]))
    store = node_store(context, run)

    def personal(k: int) -> TrainableState:
        return own_tensors(store, k, committed)

    mine = personal if personalises(half.exp, half.algorithm) else None
    score = score_clients(half.exp, global_state, [client], mine)[client]
    figures: dict[str, int | float | list[int] | list[float]] = {"global": score.shared}
    if score.personal is not None:
        figures["personal"] = score.personal
    return Message(content=RecordDict({"metrics": MetricRecord(figures)}), reply_to=msg)


def query_reply(msg: Message, context: Context) -> Message:
    """Tell the server which client this node holds (its ``partition-id``)."""
    partition = int(context.node_config.get("partition-id", -1))
    content = RecordDict({"metrics": MetricRecord({"partition-id": partition})})
    return Message(content=content, reply_to=msg)


def make_client_app(cfg: Config) -> ClientApp:
    """A ClientApp for ``cfg`` (Flower's simulation engine, where the config is in hand)."""
    app = ClientApp(mods=[secure_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(cfg, msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return evaluate_reply(cfg, msg, context)

    app.query()(query_reply)
    return app
