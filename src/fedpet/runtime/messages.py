"""A round's Flower messages: fedpet's payloads and reports as records, and back.

Payloads travel as one uint8 array in an ``ArrayRecord``: the exact bytes the codec produced,
so byte counts equal the simulation's. A download's round, client, layout, committed state
and run key travel in a ``ConfigRecord``; a reply's report and flags in a ``MetricRecord``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedpet.runtime.payloads import ClientReply, Download
from fedpet.stages import Report
from fedpet.state import Schema

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


def download_config(download: Download, round_: int, client: int, run: str) -> dict[str, Any]:
    """What a train message says besides the payload: round, client, layout, state, run.

    ``run`` names the run across resumes: a node keeps its clients' states under it.
    """
    layout = json.dumps([[name, list(shape)] for name, shape in download.layout])
    return {
        "round": round_,
        "client": client,
        "layout": layout,
        "committed": download.committed,
        "run": run,
    }


def read_download(payload: bytes, config: Mapping[str, Any]) -> tuple[Download, int, int, str]:
    """The download, round, client and run key of a train message's ``config``."""
    layout: Schema = tuple(
        (str(name), tuple(int(d) for d in shape))
        for name, shape in json.loads(str(config["layout"]))
    )
    download = Download(payload, layout, int(number(config["committed"])))
    return download, int(number(config["round"])), int(number(config["client"])), str(config["run"])


def parse_reply(reply: Message) -> ClientReply:
    """A client's train reply as a :class:`ClientReply`; ValueError or KeyError if malformed.

    The example count is the client's claim: it weights FedAvg (the robust algorithms
    ignore it), so it must be a positive integer (the intake checks it against the
    partition's size), as the count of examples trained on must be a natural number. A
    reply that withholds them (under DP) is its update alone.
    """
    payload = from_record(reply.content.array_records["arrays"])
    metrics = reply.content.metric_records["metrics"]
    flags = {k: bool(number(metrics.get(k, 0))) for k in ("kept-state", "fresh-state")}
    report = Report()
    if "num-examples" in metrics:
        examples, loss = number(metrics["num-examples"]), number(metrics["loss"])
        seen = number(metrics["examples-seen"])
        if examples < 1 or not examples.is_integer():
            raise ValueError(f"num-examples {examples:g} is not a positive integer")
        if seen < 0 or not seen.is_integer():
            raise ValueError(f"examples-seen {seen:g} is not a natural number")
        report = Report(int(examples), loss, int(seen))
    return ClientReply(payload, report, flags["kept-state"], flags["fresh-state"])


def reply_metrics(reply: ClientReply) -> MetricRecord:
    """The report and flags a reply carries beside its payload (no report under DP)."""
    flagged = (("kept-state", reply.kept), ("fresh-state", reply.fresh))
    flags: dict[str, int | float | list[int] | list[float]] = {k: 1 for k, on in flagged if on}
    r = reply.report
    if r.num_examples is None or r.loss is None or r.seen is None:
        return MetricRecord(flags)
    stats: dict[str, int | float] = {"num-examples": r.num_examples, "loss": r.loss}
    return MetricRecord({**stats, "examples-seen": r.seen, **flags})
