"""A round's Flower messages: fedpet's payloads and statistics as records, and back.

Payloads travel as one uint8 array in an ``ArrayRecord``: the exact bytes the codec produced,
so byte counts equal the simulation's. A reply's statistics travel in a ``MetricRecord``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedpet.runtime.rounds import ClientReply

PAYLOAD = "payload"


def to_record(payload: bytes) -> ArrayRecord:
    """A codec payload as an ArrayRecord of one uint8 array."""
    return ArrayRecord({PAYLOAD: Array(np.frombuffer(payload, dtype=np.uint8))})


def from_record(record: ArrayRecord) -> bytes:
    """The codec payload inside an ArrayRecord made by :func:`to_record`."""
    return bytes(record[PAYLOAD].numpy().tobytes())


def number(value: object) -> float:
    """A scalar read from a Config/MetricRecord (typed there as any record value)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number in the record, got {type(value).__name__}")
    return float(value)


def parse_reply(reply: Message, private: bool = False) -> ClientReply:
    """A client's train reply as a :class:`ClientReply`; ValueError or KeyError if malformed.

    The example count is the client's claim: it weights FedAvg (the robust algorithms
    ignore it), so it must be a positive integer (the intake checks it against the
    partition's size), as the count of examples trained on must be a natural number. Under
    DP (``private``) a reply is its update alone, and anything else it carries is ignored.
    """
    payload = from_record(reply.content.array_records["arrays"])
    if private:
        return ClientReply(payload)
    metrics = reply.content.metric_records["metrics"]
    examples, loss = number(metrics["num-examples"]), number(metrics["loss"])
    seen = number(metrics["examples-seen"])
    if examples < 1 or not examples.is_integer():
        raise ValueError(f"num-examples {examples:g} is not a positive integer")
    if seen < 0 or not seen.is_integer():
        raise ValueError(f"examples-seen {seen:g} is not a natural number")
    return ClientReply(payload, int(examples), loss, int(seen))


def reply_metrics(reply: ClientReply) -> MetricRecord:
    """The statistics a reply carries beside its payload (none under DP)."""
    if reply.num_examples is None or reply.loss is None or reply.seen is None:
        return MetricRecord({})
    stats: dict[str, int | float] = {"num-examples": reply.num_examples, "loss": reply.loss}
    return MetricRecord({**stats, "examples-seen": reply.seen})
