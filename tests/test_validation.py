"""Client updates are checked before aggregation; rejected ones leave the global state alone."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import intake_of, run_argv
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from fedpet.cli import main
from fedpet.state import schema
from fedpet.validation import update_problem

GOOD = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
LAYOUT = schema(GOOD)


@pytest.mark.parametrize(
    "update,reason",
    [
        ({"a": torch.ones(2, 3)}, "missing tensors ['b']"),
        ({**GOOD, "c": torch.ones(1)}, "unknown tensors ['c']"),
        ({"a": torch.ones(3, 2), "b": torch.zeros(4)}, "a has shape (3, 2), expected (2, 3)"),
        ({"a": torch.ones(2, 3, dtype=torch.int64), "b": torch.zeros(4)}, "expected a floating"),
        ({"a": torch.full((2, 3), float("nan")), "b": torch.zeros(4)}, "a holds NaN or Inf"),
        ({"a": torch.ones(2, 3), "b": torch.tensor([0, 0, float("inf"), 0])}, "b holds NaN"),
    ],
)
def test_bad_updates_are_named(update, reason: str) -> None:
    problem = update_problem(update, LAYOUT, max_norm=None)
    assert problem is not None and reason in problem


def test_norm_bound() -> None:
    assert update_problem(GOOD, LAYOUT, max_norm=None) is None
    assert update_problem(GOOD, LAYOUT, max_norm=2.45) is None  # norm sqrt(6) = 2.449
    problem = update_problem(GOOD, LAYOUT, max_norm=2.4)
    assert problem is not None and "update norm 2.449 exceeds" in problem


def test_rejected_updates_leave_the_global_state_untouched(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fedpet.config import load_yaml
    from fedpet.configure import build_config
    from fedpet.experiment import prepare
    from fedpet.state import extract

    out = tmp_path / "rejected"
    assert main(run_argv(tiny_model_dir, out, "--set", "federation.max_update_norm=1e-9")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates_rejected"] == 4
    assert summary["bytes_up_total"] == 2 * 2 * 4 * summary["trainable_params"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["rejected"]) == 2 for r in rows)
    assert all(
        "exceeds federation.max_update_norm" in x["reason"] for r in rows for x in r["rejected"]
    )
    initial = extract(prepare(build_config(load_yaml(out / "config.yaml"))).params)
    kept = load_file(out / "checkpoint" / "global.safetensors")
    assert kept.keys() == initial.keys()
    assert all(torch.equal(kept[k], initial[k]) for k in kept)


def test_malformed_payloads_are_rejected_not_raised() -> None:
    from fedpet.codecs import get_codec
    from fedpet.runtime.payloads import ClientReply
    from fedpet.stages import Report

    intake = intake_of({n: torch.zeros_like(t) for n, t in GOOD.items()})
    payload = get_codec("fp32").encode(GOOD)
    assert intake.receive(4, ClientReply(payload, Report(10, 0.5)))
    assert not intake.receive(7, ClientReply(payload[:-4], Report(10, 0.5)))
    reason = "malformed payload: fp32 payload has 36 bytes, the schema needs 40"
    assert intake.counts.rejected == [{"client": 7, "attempt": 0, "reason": reason}]
    assert intake.accepted == [4] and torch.equal(intake.aggregate.mean()["a"], GOOD["a"])
    assert intake.counts.bytes_up == 2 * len(payload) - 4


def _crafted(spec: str, change) -> bytes:
    """An honest upload of ``spec`` for a state of one 300-value tensor, after ``change``."""
    from fedpet.codecs import get_codec

    payload = bytearray(get_codec(spec).encode({"w": torch.linspace(-1, 1, 300)}))
    change(payload)
    return bytes(payload)


def _put(offset: int, value: bytes):
    def change(payload: bytearray) -> None:
        payload[offset : offset + len(value)] = value

    return change


NAN, INF, MINUS = (struct.pack("<f", x) for x in (float("nan"), float("inf"), -1.0))


@pytest.mark.parametrize(
    ("spec", "change", "reason"),
    [
        # top-k of 300 values keeps 30 as uint16 indices (ascending), then their values
        ("topk:0.1", _put(58, struct.pack("<H", 300)), "not ascending, distinct and below 300"),
        ("topk:0.1", _put(58, struct.pack("<H", 65535)), "not ascending, distinct and below"),
        ("topk:0.1", _put(2, struct.pack("<H", 0)), "not ascending, distinct and below 300"),
        ("topk:0.1", lambda p: p.__setitem__(slice(0, 4), p[2:4] + p[0:2]), "not ascending"),
        ("int8", _put(0, NAN), "w: an int8 scale is negative, NaN or infinite"),
        ("int8", _put(0, INF), "an int8 scale is negative, NaN or infinite"),
        ("int8", _put(0, MINUS), "an int8 scale is negative, NaN or infinite"),
        ("topk:0.1+int8", _put(60, NAN), "an int8 scale is negative, NaN or infinite"),
    ],
)
def test_a_crafted_upload_is_rejected_with_why(spec: str, change, reason: str) -> None:
    from fedpet.runtime.payloads import ClientReply
    from fedpet.stages import Report

    intake = intake_of({"w": torch.zeros(300)}, spec)
    assert intake.receive(4, ClientReply(_crafted(spec, lambda p: None), Report(10, 0.5)))
    assert not intake.receive(7, ClientReply(_crafted(spec, change), Report(10, 0.5)))
    assert intake.accepted == [4] and len(intake.counts.rejected) == 1
    assert intake.counts.rejected[0]["reason"].startswith("malformed payload: w: ")
    assert reason in intake.counts.rejected[0]["reason"]


SPECS = ["fp32", "fp16", "bf16", "int8", "int8:row:sr", "topk:0.2", "topk:0.5+int8:row", "raises"]


@pytest.fixture(scope="module")
def _raising_codec():
    """A registered value codec whose reader fails the way a buggy plugin's might."""
    from fedpet.codecs import CODECS, Floats, register_codec

    class Raises(Floats):
        def unpack(self, buf: bytes, shape: tuple[int, ...]) -> torch.Tensor:
            return super().unpack(buf, shape)[len(buf)]  # IndexError

    register_codec("raises", Raises("fp32"))
    yield
    del CODECS["raises"]


@given(spec=st.sampled_from(SPECS), seed=st.integers(0, 2**32 - 1))
def test_random_bytes_of_the_right_length_never_raise_from_theintake_of(
    _raising_codec, spec: str, seed: int
) -> None:
    from fedpet.codecs import get_codec
    from fedpet.runtime.payloads import ClientReply
    from fedpet.stages import Report

    like = {"a": torch.zeros(7, 5), "b": torch.zeros(300), "c": torch.zeros(1)}
    size = sum(get_codec(spec).values.nbytes(tuple(t.shape)) for t in like.values())
    payload = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    intake = intake_of(like, spec)
    if intake.receive(
        9, ClientReply(payload, Report(10, 0.5))
    ):  # random bytes can be a fair update
        decoded = get_codec(spec).decode(payload, schema(like))
        assert update_problem(decoded, schema(like), None) is None
    else:  # malformed, or decoded to NaN or Inf
        assert len(intake.counts.rejected) == 1 and intake.accepted == []


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_posing_as_a_checkpoint_is_refused_unexecuted(tmp_path: Path) -> None:
    import pickle

    from fedpet.errors import FedpetError
    from fedpet.rundir import load_checkpoint

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"round": 1}))
    for name in ("global", "best"):
        (folder / f"{name}.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(FedpetError, match="no readable checkpoint"):
        load_checkpoint(tmp_path / "run")
    assert not marker.exists()
    pickle.loads((folder / "global.safetensors").read_bytes())  # the payload is live
    assert marker.exists()


def test_a_secure_aggregate_is_checked_as_one_update() -> None:
    like = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    mean = {"w": torch.full((2, 3), 0.5), "b": torch.ones(3)}

    from fedpet.stages import Report

    reports = {4: Report(10, 0.5, 10), 7: Report(10, 0.25, 10)}
    good = intake_of(like)
    good.receive_sum(reports, False, mean)
    assert good.aggregate.num_clients == 2 and good.aggregate.total_weight == 20.0
    assert all(torch.equal(good.aggregate.mean()[k], mean[k]) for k in mean)
    assert good.counts.examples == 20 and good.counts.loss_sum == 7.5
    lying = {**reports, 7: Report(12, 0.25, 12)}  # a claim its partition cannot have
    cases = [(reports, None, "unmasking failed"), (reports, {**mean, "b": mean["b"] / 0}, "Inf")]
    for sent, bad, reason in [*cases, (lying, mean, "claims 12 examples")]:
        lost = intake_of(like)
        lost.receive_sum(sent, False, bad)
        assert lost.aggregate.num_clients == 0
        assert [x["client"] for x in lost.counts.rejected] == [4, 7]
        assert all(reason in str(x["reason"]) for x in lost.counts.rejected)
