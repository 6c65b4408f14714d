"""Client states stay on the client's side, versioned by round, and commit as the server says."""

import logging
from pathlib import Path

import pytest
import torch

SCAFFOLD = {"algorithm.name": "scaffold", "train.optimizer": "sgd", "train.max_grad_norm": None}


def _stores(tmp_path: Path):
    from flwr.app import RecordDict

    from fedpet.runtime.client_store import DiskStore
    from fedpet.runtime.flower_client import RecordStore

    return {"disk": DiskStore(tmp_path / "states"), "node": RecordStore(RecordDict())}


@pytest.mark.parametrize("kind", ["disk", "node"])
def test_loading_the_committed_version_drops_the_others(tmp_path: Path, kind: str) -> None:
    store = _stores(tmp_path)[kind]
    assert store.load(3, 0) == {}  # no state yet
    for round_ in (1, 2, 4):  # round 1 committed; 2 and 4 saved, never committed
        store.save(3, round_, {"c": torch.full((2,), float(round_))})
    store.save(5, 2, {"c": torch.zeros(2)})  # another client's: untouched
    state = store.load(3, 1)
    assert state is not None and torch.equal(state["c"], torch.ones(2))
    assert store.load(3, 2) is None  # dropped as uncommitted when version 1 was loaded
    assert store.load(3, 1) is None  # ... and loading 2 dropped 1: nothing is left
    other = store.load(5, 2)
    assert other is not None and torch.equal(other["c"], torch.zeros(2))


def test_a_state_on_the_node_s_disk_survives_a_restart(tmp_path: Path) -> None:
    from fedpet.runtime.client_store import DiskStore

    DiskStore(tmp_path).save(0, 3, {"c": torch.ones(1)})
    restarted = DiskStore(tmp_path)  # a new process on the same folder
    state = restarted.load(0, 3)
    assert state is not None and torch.equal(state["c"], torch.ones(1))


def _train_message(cfg, committed: int):
    """Round 2's train message for client 0 from the model's state, naming ``committed``."""
    import time

    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    from fedpet.runtime.flower_client import cached_client
    from fedpet.runtime.messages import download_config, to_record
    from fedpet.runtime.payloads import Download
    from fedpet.state import extract, schema

    half = cached_client(cfg)
    params = extract(half.exp.params)
    state = half.algorithm.download(params, half.algorithm.init_server_state(params))
    download = Download(half.down.encode(state), schema(state), committed)
    config = ConfigRecord(download_config(download, 2, 0, "run-key"))
    content = RecordDict({"arrays": to_record(download.payload), "config": config})
    metadata = Metadata(1, "m", 0, 1, "", "", time.time(), 60.0, "train")
    return Message(content=content, metadata=metadata)


def test_a_node_that_lost_a_client_s_state_starts_it_afresh_and_says_so(
    tiny_config, tmp_path: Path, caplog
) -> None:
    from flwr.app import Context, RecordDict

    from fedpet.runtime.flower_client import train_reply
    from fedpet.runtime.messages import parse_reply

    cfg = tiny_config(**SCAFFOLD)
    on_disk = {"state-dir": str(tmp_path)}
    first = Context(1, 1, on_disk, RecordDict(), {})
    reply = parse_reply(train_reply(cfg, _train_message(cfg, 0), first))
    assert reply.kept and not reply.fresh  # SCAFFOLD keeps its control
    assert [p.name for p in (tmp_path / "run-key").iterdir()] == ["0-r2.safetensors"]
    # the SuperNode restarts: a new context; its disk still holds the state committed in 2
    restarted = Context(1, 1, on_disk, RecordDict(), {})
    with caplog.at_level(logging.WARNING, logger="fedpet"):
        again = parse_reply(train_reply(cfg, _train_message(cfg, 2), restarted))
        assert not again.fresh and not caplog.records
        # without a state directory the state lived in the lost context: afresh, logged
        in_memory = Context(1, 1, {}, RecordDict(), {})
        lost = parse_reply(train_reply(cfg, _train_message(cfg, 2), in_memory))
    assert lost.fresh and lost.kept
    assert [
        "client 0 has no state from round 2 here; it starts afresh" in r.message
        for r in caplog.records
    ] == [True]


def test_the_server_logs_a_client_that_started_afresh(tiny_config, tmp_path: Path, caplog) -> None:
    from fedpet.experiment import prepare
    from fedpet.rundir import RunDir
    from fedpet.runtime.payloads import ClientReply
    from fedpet.runtime.recorder import Recorder
    from fedpet.runtime.server_half import ServerHalf

    exp = prepare(tiny_config(**SCAFFOLD))
    server = ServerHalf(exp, Recorder(exp, RunDir(tmp_path)))
    server.committed = {1: 4}  # as a checkpoint of round 4 would restore it
    intake = server.open(5)
    with caplog.at_level(logging.WARNING, logger="fedpet"):
        server.receive(intake, 1, ClientReply(b"", fresh=True))
        server.receive(intake, 2, ClientReply(b""))
    said = [r.message for r in caplog.records]
    assert said == ["fedpet: client 1's state from round 4 was gone; it started afresh"]
