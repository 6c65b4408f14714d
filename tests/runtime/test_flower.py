"""The Flower runtime reuses the simulation's pieces: same cohorts, bytes and global state."""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import refused, run_argv
from safetensors.torch import load_file

from fedpet.cli import main

TIMING = {"train_seconds", "eval_seconds"}


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return run_argv(model, out, "--seed", "3", *extra)


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _lost(out: Path) -> list[tuple[int, list, list]]:
    """Per round with a lost client, why: what a failing comparison of two runs shows."""
    return [
        (r["round"], r["failed"], r["rejected"])
        for r in _metrics(out)
        if r.get("failed") or r.get("rejected")  # (a DP run releases neither)
    ]


# FlexLoRA with two ranks: per-client downloads, layouts and server views on both sides;
# lossy codecs with random rounding, seeded alike on both sides
RANKED = ("--algorithm", "flexlora", "--set", "algorithm.ranks=[2,8]")
RANKED += ("--codec-up", "int8:row:sr", "--codec-down", "bf16")
# DP with central noise, Poisson cohorts and an adaptive clip: sampling, clipping, noise and
# the clip's update all happen on the server side of either runtime (drawn from the run
# seed, so that two runs can be compared); FFA-LoRA, a linear rule DP allows
CENTRAL_DP = ("--dp", "--dp-noise", "0.1", "--dp-clip", "0.05", "--algorithm", "ffa-lora")
CENTRAL_DP += ("--set", "privacy.target_quantile=0.5", "--set", "privacy.reproducible=true")


# clients that keep a state between rounds: SCAFFOLD's control; error feedback's residual
# with FedSA-LoRA's B factors, each client scored on its local test split by its node; over
# 3 rounds of 2 of 4 clients some are sampled again, and continue from their state
SCAFFOLD = ("--algorithm", "scaffold", "--optimizer", "sgd", "--set", "train.max_grad_norm=null")
SCAFFOLD += ("--rounds", "3")
FEEDBACK = ("--codec-up", "topk:0.2+int8", "--rounds", "3", "--method", "lora")
FEEDBACK += ("--algorithm", "fedsa-lora", "--set", "data.client_test_fraction=0.25")
# FLoRA: clients in step are sent the last stacks and merge them into the merge they keep
FLORA = ("--algorithm", "flora", "--rounds", "3", "--set", "algorithm.ranks=[4,8]")
# RoLoRA's replies hold the round's factor; LoRA-SB's B and A, derived from data by every
# process (the server's and each Ray worker's), agree
ROLORA = ("--algorithm", "rolora", "--rounds", "2")
LORA_SB = ("--method", "lora-sb")
# FedEx-LoRA's corrections go down in round 2; FedSVD's new A; HetLoRA's clients keep the
# ranks they pruned, and start their cut components at zero
FEDEX = ("--algorithm", "fedex-lora")
FEDSVD = ("--algorithm", "fedsvd")
HETLORA = ("--algorithm", "hetlora", "--rounds", "3", "--set", "algorithm.ranks=[4,8]")
HETLORA += ("--set", "algorithm.prune_gamma=0.75", "--set", "algorithm.prune_lambda=1")


@pytest.mark.parametrize(
    "flags",
    [RANKED, CENTRAL_DP, SCAFFOLD, FEEDBACK, FLORA, ROLORA, LORA_SB, FEDEX, FEDSVD, HETLORA],
    ids=[
        "flexlora-codecs",
        "central-dp",
        "scaffold",
        "fedsa-lora-error-feedback",
        "flora",
        "rolora",
        "lora-sb",
        "fedex-lora",
        "fedsvd",
        "hetlora-pruning",
    ],
)
@pytest.mark.integration
def test_flower_simulation_equals_the_in_process_runtime(
    tiny_model_dir: Path, tmp_path: Path, flags: tuple[str, ...], capfd
) -> None:
    flower, local = tmp_path / "flower", tmp_path / "local"
    assert main(_argv(tiny_model_dir, flower, "--runtime", "flower-sim", *flags)) == 0
    said = capfd.readouterr()
    printed = said.out + said.err
    assert "round 1/" in printed  # fedpet's round lines, not buried by Flower's
    assert "Starting FedpetStrategy" not in printed and "DEPRECATED FEATURE" not in printed
    assert main(_argv(tiny_model_dir, local, *flags)) == 0
    a = load_file(flower / "checkpoint" / "global.safetensors")
    b = load_file(local / "checkpoint" / "global.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), _lost(flower)
    rows = _metrics(flower)
    assert rows == _metrics(local), _lost(flower)
    summary = json.loads((flower / "summary.json").read_text())
    local_summary = json.loads((local / "summary.json").read_text())
    # the Ray processes (each with its own copy of torch and the model) count too
    assert summary["peak_rss_mb"] > local_summary["peak_rss_mb"] + 500
    if flags == RANKED:
        full_rank = 2 * 2 * 4 * summary["trainable_params"]  # 2 rounds, 2 clients, fp32
        assert 0 < summary["bytes_up_total"] < full_rank  # rank-2 clients send less
    elif flags == CENTRAL_DP:
        assert rows[-1]["epsilon"] > rows[0]["epsilon"] > 0 and rows[0]["dp_clip"] == 0.05
        assert summary["epsilon"] == rows[-1]["epsilon"]
    elif flags in (ROLORA, LORA_SB, FEDEX, FEDSVD):  # exact rules, and no client state
        assert all(r["aggregation_error"] <= 1e-5 for r in rows)
    else:  # the clients' states stayed with them: the server's run directory holds none
        if flags == FEEDBACK:  # every node scored its client as the simulation did
            scored = (flower / "clients.csv").read_text()
            assert scored == (local / "clients.csv").read_text()
            assert len(scored.splitlines()) == 5 and ",," not in scored
        sampled = [k for r in rows for k in r["clients"]]
        assert len(sampled) > len(set(sampled))  # a client continued from its state
        assert list((local / "clients").glob("*.safetensors"))  # where the simulation keeps them
        assert not [p for p in flower.rglob("*") if p.name.split("-r")[0].isdigit()]
        assert set(json.loads((flower / "checkpoint" / "state.json").read_text())) >= {
            "client_rounds"
        }


def test_flower_sim_refuses_centralized(capsys) -> None:
    assert "runtime = 'flower-sim' is not allowed" in refused(
        ["run", "--dry-run", "--runtime", "flower-sim", "--centralized"], capsys
    )


def _message(content, message_type: str = "train"):
    """A message as the ServerApp would send it to node 1, made outside any Flower run.

    Message(content, dst_node_id, message_type) reads the run's identity from the process,
    which only a Flower run sets: a test that relied on it passed only after another test
    had started one.
    """
    import time as clock

    from flwr.app import Message, Metadata

    metadata = Metadata(
        run_id=1,
        message_id="instruction",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="",
        created_at=clock.time(),
        ttl=60.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def test_malformed_replies_are_refused() -> None:
    from flwr.app import MetricRecord, RecordDict

    from fedpet.runtime.messages import parse_reply, to_record
    from fedpet.stages import Report

    def reply(metrics: dict):
        content = RecordDict({"arrays": to_record(b"\0" * 8), "metrics": MetricRecord(metrics)})
        return _message(content)

    good = parse_reply(reply({"num-examples": 12, "loss": 0.5, "examples-seen": 8}))
    assert (good.payload, good.report, good.kept) == (b"\0" * 8, Report(12, 0.5, 8), False)
    with pytest.raises(ValueError, match="num-examples 0 is not a positive integer"):
        parse_reply(reply({"num-examples": 0, "loss": 0.5, "examples-seen": 8}))
    with pytest.raises(ValueError, match="examples-seen -1 is not a natural number"):
        parse_reply(reply({"num-examples": 2, "loss": 0.5, "examples-seen": -1}))
    with pytest.raises(KeyError):
        parse_reply(reply({"num-examples": 2, "examples-seen": 8}))
    # a reply without a count withholds its report (the intake refuses it unless DP weighs it)
    bare = parse_reply(reply({"loss": 0.5, "kept-state": 1}))
    assert (bare.report, bare.kept, bare.fresh) == (Report(), True, False)


def test_a_client_s_claimed_weight_must_be_its_partition_s_size() -> None:
    from helpers import intake_of

    from fedpet.codecs import get_codec
    from fedpet.runtime.payloads import ClientReply
    from fedpet.stages import Report

    update = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    intake = intake_of({n: torch.zeros_like(t) for n, t in update.items()})  # partitions of 10
    payload = get_codec("fp32").encode(update)
    assert intake.receive(4, ClientReply(payload, Report(10, 0.5, 10)))
    assert not intake.receive(7, ClientReply(payload, Report(1000, 0.5, 10)))  # outweighing
    assert not intake.receive(9, ClientReply(payload, Report(10, 0.5, 11)))  # one epoch of 10
    assert not intake.receive(7, ClientReply(payload))  # no count to weight it by
    reasons = [r["reason"] for r in intake.counts.rejected]
    assert reasons == [
        "claims 1000 examples, its partition holds 10",
        "claims to have trained on 11 examples, more than its 10 x 1 local epochs",
        "the reply withholds its example count, which weights it",
    ]
    assert intake.accepted == [4] and intake.aggregate.total_weight == 10
    assert intake.counts.examples == 10  # a refused claim counts nothing


@pytest.mark.integration
def test_flower_sim_resumes_after_its_last_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    import yaml

    flower, local = tmp_path / "flower", tmp_path / "local"
    base = _argv(tiny_model_dir, flower, "--runtime", "flower-sim")
    assert main(base) == 0  # rounds 1-2; then it is as if the run had stopped there
    config = yaml.safe_load((flower / "config.yaml").read_text())
    config["federation"]["rounds"] = 4
    (flower / "config.yaml").write_text(yaml.safe_dump(config))
    (flower / "summary.json").unlink()
    assert main(["run", "--resume", str(flower)]) == 0  # rounds 3-4 on Flower again
    assert main(_argv(tiny_model_dir, local, "--rounds", "4")) == 0
    a = load_file(flower / "checkpoint" / "global.safetensors")
    b = load_file(local / "checkpoint" / "global.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), _lost(flower)
    assert [r["round"] for r in _metrics(flower)] == [1, 2, 3, 4]
    assert _metrics(flower) == _metrics(local), _lost(flower)


DISTRIBUTED_DP = ("--dp", "--dp-noise", "1", "--dp-clip", "0.05")
DISTRIBUTED_DP += ("--set", "privacy.noise=distributed", "--set", "privacy.sampling=fixed")
DISTRIBUTED_DP += ("--set", "privacy.reproducible=true")  # the same noise in both runs


def _totals(out: Path) -> dict:
    """The server's running totals, from its checkpoint (a DP run releases none of them)."""
    return json.loads((out / "checkpoint" / "state.json").read_text())["totals"]


# FedSA-LoRA: the secure sum holds only the shared tensors (the A factors and the head)
FEDSA = ("--method", "lora", "--algorithm", "fedsa-lora")


# RoLoRA: the secure sum holds only the round's factor (B in round 1) and the head
@pytest.mark.parametrize(
    "dp", [FEDSA, DISTRIBUTED_DP, ROLORA[:2]], ids=["fedsa-lora", "distributed-dp", "rolora"]
)
@pytest.mark.integration
def test_secure_aggregation_matches_the_plain_round_within_its_quantization(
    tiny_model_dir: Path, tmp_path: Path, dp: tuple[str, ...]
) -> None:
    secure, plain = tmp_path / "secure", tmp_path / "plain"
    flags = ("--rounds", "1", *dp)
    secure_flags = ("--runtime", "flower-sim", "--secure-aggregation")
    assert main(_argv(tiny_model_dir, secure, *flags, *secure_flags)) == 0
    assert main(_argv(tiny_model_dir, plain, *flags)) == 0  # the plain round, as Flower runs it
    a = load_file(secure / "checkpoint" / "global.safetensors")
    b = load_file(plain / "checkpoint" / "global.safetensors")
    # each client's update (clipped and noised by the client under DP), scaled by n_k / max n
    # (1 under DP), is clipped to +-8 and stochastically rounded to 2**22 levels: the
    # unmasked mean is off by < 2 clients x 16 / 2**22
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 2 * 16 / 2**22, (_lost(secure), _lost(plain))
    [row], [plain_row] = _metrics(secure), _metrics(plain)
    totals, plain_totals = _totals(secure), _totals(plain)
    assert totals["failed"] == totals["rejected"] == 0  # both clients in the sum
    if dp == DISTRIBUTED_DP:  # the clients send no statistic of their data, masked or not
        assert {"train_loss", "examples"}.isdisjoint(row) and row["epsilon"] > 0
        assert row["epsilon"] == plain_row["epsilon"]
    else:
        assert row["aggregated"] == 2 and row["clients"] == plain_row["clients"]
        assert row["train_loss"] == plain_row["train_loss"]  # same local training
        assert row["examples"] == plain_row["examples"]  # counts travel apart from weights
    # the upload is masked int64 vectors plus the key exchange, more than 2x the fp32 payload
    assert totals["bytes_up"] > 2 * plain_totals["bytes_up"]


def test_a_deployment_config_runs_only_under_flwr_run(capsys) -> None:
    assert main(["run", "--dry-run", "--runtime", "flower"]) == 0
    err = refused(["run", "--runtime", "flower", "--out", "/nonexistent/x"], capsys)
    assert "runtime = 'flower' is a Flower deployment: start or resume it" in err


def test_under_dp_a_flower_client_sends_its_update_alone(tiny_config) -> None:
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.compat.common import recorddict_compat

    from fedpet.codecs import get_codec
    from fedpet.runtime.flower_client import cached_client, train_reply
    from fedpet.runtime.messages import download_config, parse_reply, to_record
    from fedpet.runtime.payloads import Download
    from fedpet.runtime.secagg import masked_reply
    from fedpet.stages import Report
    from fedpet.state import extract, schema

    def ask(cfg):
        state = extract(cached_client(cfg).exp.params)
        download = Download(get_codec("fp32").encode(state), schema(state))
        config = ConfigRecord(download_config(download, 1, 0, "run"))
        return _message(RecordDict({"arrays": to_record(download.payload), "config": config}))

    def context():
        return Context(1, 1, {}, RecordDict(), {})

    dp = tiny_config(**{"privacy.enabled": True, "privacy.noise_multiplier": 1.0})
    private = train_reply(dp, ask(dp), context())
    assert dict(private.content.metric_records["metrics"]) == {}
    assert parse_reply(private).report == Report()
    plain = train_reply(tiny_config(), ask(tiny_config()), context())
    assert set(plain.content.metric_records["metrics"]) == {"num-examples", "loss", "examples-seen"}
    # a secure round's reply: the masked values, and no unmasked statistics under DP
    msg = ask(dp)
    res = recorddict_compat.recorddict_to_fitres(
        masked_reply(msg, {"w": torch.ones(3)}, Report(), False).content, keep_input=False
    )
    assert res.metrics == {} and res.num_examples == 1


@pytest.fixture
def as_serverapp(monkeypatch) -> None:
    """The task identity the ServerApp's process has (messages are made in it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class _StartingGrid:
    """A grid at the start of a run: its nodes register ``registered`` seconds in; a node
    answers a question ``latency`` seconds after it was asked (a SuperNode starts its
    ClientApp first), with an error if it was asked before its ClientApp had ``started``."""

    def __init__(
        self, nodes: int, registered: float, started: float, latency: float, claims=None
    ) -> None:
        import time as clock

        self.clock, self.nodes, self.claims = clock, nodes, claims or {}
        self.registered, self.started, self.latency = registered, started, latency
        self.t0 = clock.monotonic()
        self.sent: dict = {}

    def get_node_ids(self) -> list[int]:
        up = self.clock.monotonic() - self.t0 >= self.registered
        return list(range(1, self.nodes + 1)) if up else []

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            ids.append(f"question-{len(self.sent)}")
            message.metadata.__dict__["_message_id"] = ids[-1]
            self.sent[ids[-1]] = (message, self.clock.monotonic())
        return ids

    def pull_messages(self, ids):
        from flwr.app import Error, Message, MetricRecord, RecordDict

        now, replies = self.clock.monotonic(), []
        for sent in ids:
            message, at = self.sent[sent]
            if now - at < self.latency:
                continue
            if at - self.t0 < self.started:
                replies.append(Message(Error(0, "ClientApp still starting"), reply_to=message))
                continue
            node = message.metadata.dst_node_id
            client = self.claims.get(node, node - 1)
            content = RecordDict({"metrics": MetricRecord({"partition-id": client})})
            replies.append(Message(content, reply_to=message))
        return replies


@pytest.mark.integration
def test_the_server_waits_for_every_client_s_node_to_answer(as_serverapp) -> None:
    import time as clock

    from fedpet.runtime.roster import QUERY_TIMEOUT, Roster

    roster = Roster(clients=4)
    # no node has registered when the server starts; a question takes 2.5 s to answer, more
    # than QUERY_TIMEOUT, and those asked in the first second are answered with an error
    grid = _StartingGrid(nodes=4, registered=0.5, started=1.0, latency=2.5)
    start = clock.monotonic()
    roster.discover(grid, patience=60.0)  # type: ignore[arg-type]
    assert roster.nodes == {0: 1, 1: 2, 2: 3, 3: 4}
    assert clock.monotonic() - start < 8.0
    # with no patience (a later round): one question each, QUERY_TIMEOUT s, then on
    late = Roster(clients=4)
    start = clock.monotonic()
    slow = _StartingGrid(nodes=4, registered=0.0, started=0.0, latency=60.0)
    late.discover(slow, patience=0.0)  # type: ignore[arg-type]
    assert late.nodes == {} and len(slow.sent) == 4
    assert clock.monotonic() - start < QUERY_TIMEOUT + 1.0


def test_out_of_range_and_duplicate_client_claims_are_refused_and_logged(
    as_serverapp, caplog
) -> None:
    from fedpet.runtime.roster import Roster

    roster = Roster(clients=4)
    # nodes 1 to 3 hold clients 0 to 2; node 4 claims client 9, node 5 client 1 (node 2's),
    # node 6 claims -1 (no partition-id set); client 3 is nobody's
    grid = _StartingGrid(6, 0.0, 0.0, 0.0, claims={4: 9, 5: 1, 6: -1})
    with caplog.at_level("WARNING", logger="fedpet"):
        roster.discover(grid, patience=1.0)  # type: ignore[arg-type]
    assert roster.nodes == {0: 1, 1: 2, 2: 3}  # not counted as every client mapped
    assert roster.refused == {4, 5, 6}
    said = [r.getMessage() for r in caplog.records]
    assert "fedpet: node 4 refused: partition-id 9 is not a client of this run (0 to 3)" in said
    assert "fedpet: node 5 refused: client 1 is already held by node 2" in said
    assert "fedpet: node 6 refused: partition-id -1 is not a client of this run (0 to 3)" in said
    asked = len(grid.sent)
    roster.discover(grid, patience=0.0)  # type: ignore[arg-type]
    assert len(grid.sent) == asked  # a refused node is not asked again


def test_with_a_node_map_only_bound_nodes_hold_clients(as_serverapp, caplog) -> None:
    from fedpet.runtime.roster import Roster

    # the map binds node 2 to client 0 and node 1 to client 1; node 1 claims client 0
    # instead of its own client 1; nodes 3 and 4 are not in the map (node 3 would claim
    # client 0, before node 2: without a map it would hold it)
    roster = Roster(clients=3, bound={2: 0, 1: 1})
    grid = _StartingGrid(4, 0.0, 0.0, 0.0, claims={1: 0, 2: 0, 3: 0, 4: 2})
    with caplog.at_level("WARNING", logger="fedpet"):
        roster.discover(grid, patience=1.0)  # type: ignore[arg-type]
    assert roster.nodes == {0: 2} and roster.refused == {1, 3, 4}
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "fedpet: node 3 refused: not in the node map",
        "fedpet: node 4 refused: not in the node map",
        "fedpet: node 1 refused: it claims client 0, the node map binds it to client 1",
    ]
    asked = {message.metadata.dst_node_id for message, _ in grid.sent.values()}
    assert asked == {1, 2}  # a node outside the map is sent no message at all


def test_with_a_node_map_discovery_waits_only_for_the_bound_nodes(as_serverapp) -> None:
    import time as clock

    from fedpet.runtime.roster import Roster

    # client 2 is bound to no node: no answer can map it, so nothing is left to wait for
    roster = Roster(clients=3, bound={1: 0, 2: 1})
    start = clock.monotonic()
    roster.discover(_StartingGrid(2, 0.0, 0.0, 0.0), patience=10.0)  # type: ignore[arg-type]
    assert roster.nodes == {0: 1, 1: 2}
    assert clock.monotonic() - start < 5.0


def test_a_node_map_is_read_from_the_run_config_and_checked() -> None:
    from fedpet.errors import FedpetError
    from fedpet.runtime.roster import Roster, node_map

    assert node_map("") is None and node_map("  ") is None
    assert node_map("16317938773613128034=1  7=0") == {16317938773613128034: 1, 7: 0}
    for text in ("abc=1", "5=", "5", "5=-1", "5=1.0", "-5=1"):
        said = f"run config nodes: {text.split()[-1]!r} is not allowed: give <node id>=<client>"
        with pytest.raises(FedpetError, match=re.escape(said)):
            node_map(text)
    for text in ("1=0 2=0", "1=0 1=1"):
        with pytest.raises(FedpetError, match="binds a node or a client twice"):
            node_map(text)
    with pytest.raises(FedpetError, match="binds client 3: this run has clients 0 to 2"):
        Roster(3, {1: 3})


def test_secure_aggregation_masks_use_the_whole_seed_on_both_sides() -> None:
    import sys

    import numpy as np
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow

    from fedpet.runtime.secagg import masks

    # two 32-byte seeds whose 4-byte words XOR to the same 32 bits
    a = bytes(range(32))
    b = bytes(x ^ 0xFF if i < 8 else x for i, x in enumerate(a))
    shapes = [(3, 4), ()]
    flowers = [pseudo_rand_gen(s, 2**32, shapes) for s in (a, b)]
    assert all(np.array_equal(x, y) for x, y in zip(*flowers, strict=True))  # Flower's: alike
    ours = [masks(s, 2**32, shapes) for s in (a, b)]
    assert not np.array_equal(ours[0][0], ours[1][0])
    assert [m.shape for m in ours[0]] == [(3, 4), ()] and ours[0][0].dtype == np.int64
    assert all(0 <= int(v) < 2**32 - 1 for v in ours[0][0].flatten())
    assert np.array_equal(masks(a, 2**32, shapes)[0], ours[0][0])  # a seed gives one mask
    client = sys.modules["flwr.client.mod.secure_aggregation.secaggplus_mod"]
    assert client.pseudo_rand_gen is masks and secaggplus_workflow.pseudo_rand_gen is masks
