import pytest
import torch

from fedpet.codecs import get_codec
from fedpet.state import schema


def test_fp32_round_trip_is_exact_and_counts_four_bytes_per_scalar() -> None:
    torch.manual_seed(0)
    state = {"a.weight": torch.randn(3, 5), "b.bias": torch.randn(7), "c": torch.randn(2, 2, 2)}
    codec = get_codec("fp32")
    payload = codec.encode(state)
    assert len(payload) == 4 * (15 + 7 + 8)
    back = codec.decode(payload, schema(state))
    assert list(back) == list(state)
    for name, t in state.items():
        assert back[name].shape == t.shape
        assert torch.equal(back[name], t)


def test_fp32_decode_rejects_a_payload_of_the_wrong_length() -> None:
    state = {"w": torch.ones(4)}
    codec = get_codec("fp32")
    try:
        codec.decode(codec.encode(state)[:-4], schema(state))
    except ValueError as exc:
        assert "12 bytes" in str(exc) and "16" in str(exc)
    else:
        raise AssertionError("a truncated payload was accepted")


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "m.lora_A.weight": torch.randn(8, 40, generator=gen) * torch.logspace(-3, 0, 8)[:, None],
        "head.bias": torch.randn(3, generator=gen),
        "big": torch.randn(300, generator=gen),  # 300 values: indices need two bytes
    }


@pytest.mark.parametrize(("spec", "rtol"), [("fp16", 2**-11), ("bf16", 2**-8)])
def test_half_precisions_round_to_nearest_within_their_relative_step(
    spec: str, rtol: float
) -> None:
    state = _state()
    codec = get_codec(spec)
    payload = codec.encode(state)
    assert len(payload) == 2 * sum(t.numel() for t in state.values())
    back = codec.decode(payload, schema(state))
    for name, t in state.items():
        err = (back[name] - t).abs()
        # relative to the value, but no finer than fp16's smallest subnormal step
        assert bool((err <= rtol * t.abs() + 2**-25).all()) and float(err.max()) > 0


@pytest.mark.parametrize("per_row", [False, True])
def test_int8_is_within_half_a_step_of_each_scale(per_row: bool) -> None:
    state = _state()
    codec = get_codec("int8:row" if per_row else "int8")
    payload = codec.encode(state)
    scales = 8 + 1 + 1 if per_row else 3  # a scale per row of the matrix, one per vector
    assert len(payload) == sum(t.numel() for t in state.values()) + 4 * scales
    back = codec.decode(payload, schema(state))
    for name, t in state.items():
        rows = t.reshape(t.shape[0] if per_row and t.dim() == 2 else 1, -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        err = (back[name].reshape(rows.shape) - rows).abs()
        assert bool((err <= step / 2 + 1e-7).all())
    # per-row scales keep the small rows: far below a per-tensor scale's error there
    small = state["m.lora_A.weight"][0]
    err = (back["m.lora_A.weight"][0] - small).abs().max()
    assert (err < 0.01 * small.abs().max()) == per_row


def test_stochastic_int8_is_unbiased_and_seeded() -> None:
    t = {"w": torch.full((20001,), 0.3)}
    t["w"][0] = 1.0  # the scale is 1/127: 0.3 is 38.1 steps
    codec = get_codec("int8:sr")
    back = codec.decode(codec.encode(t, seed=1), schema(t))["w"][1:]
    assert set(back.unique().mul(127).round().tolist()) == {38.0, 39.0}
    assert abs(float(back.mean()) - 0.3) < 2e-4  # nearest rounding gives 38/127 = 0.2992
    assert codec.encode(t, seed=1) == codec.encode(t, seed=1) != codec.encode(t, seed=2)


def test_topk_keeps_the_largest_values_with_indices_and_counts_them() -> None:
    state = _state()
    codec = get_codec("topk:0.1+int8")
    payload = codec.encode(state)
    # per tensor: ceil(10%) values (one byte each), their indices (1 or 2 bytes), one scale
    kept = {"m.lora_A.weight": 32, "head.bias": 1, "big": 30}
    index_bytes = {"m.lora_A.weight": 2, "head.bias": 1, "big": 2}
    expected = sum(k * (1 + index_bytes[n]) + 4 for n, k in kept.items())
    assert len(payload) == expected
    back = codec.decode(payload, schema(state))
    for name, t in state.items():
        nonzero = back[name].ne(0)
        assert int(nonzero.sum()) == kept[name]
        threshold = t.abs().flatten().kthvalue(t.numel() - kept[name] + 1).values
        assert bool((t.abs()[nonzero] >= threshold).all())
    plain = get_codec("topk:0.1")  # fp32 values: exact where kept
    back = plain.decode(plain.encode(state), schema(state))
    assert all(torch.equal(back[n][back[n] != 0], t[back[n] != 0]) for n, t in state.items())


def test_error_feedback_sends_the_sum_of_the_updates_exactly_over_time() -> None:
    from fedpet.codecs import Feedback

    inner = get_codec("topk:0.05+int8")
    codec = Feedback(inner.spec, inner.values)
    updates = [_state(seed) for seed in range(6)]
    layout = schema(updates[0])
    sent = {n: torch.zeros_like(t) for n, t in updates[0].items()}
    for update in updates:
        for n, t in inner.decode(codec.encode(update), layout).items():
            sent[n] += t
    residual = codec.state_dict()
    for n in sent:
        true = sum(u[n] for u in updates)
        assert torch.allclose(sent[n] + residual[n], true, atol=1e-5)
        assert not torch.allclose(sent[n], true, atol=1e-2)  # without the residual: far off


@pytest.mark.parametrize(
    "spec",
    ["int7", "topk:1.5", "topk:0", "topk:x", "fp16+int8", "int8:col", "topk:0.1+topk:0.1", ""],
)
def test_a_bad_spec_is_refused_with_what_is_allowed(spec: str) -> None:
    with pytest.raises(ValueError, match="is not a codec: use fp32, fp16, bf16"):
        get_codec(spec)


def test_a_state_decodes_by_name_whatever_its_dict_order() -> None:
    # SCAFFOLD's update interleaves model and control tensors; the schema lists them apart
    update = {"x": torch.ones(3), "c.x": torch.full((3,), 2.0), "y": torch.full((2,), 3.0)}
    layout = (("x", (3,)), ("y", (2,)), ("c.x", (3,)))
    for spec in ("fp32", "int8", "topk:0.5"):
        codec = get_codec(spec)
        back = codec.decode(codec.encode(update), layout)
        assert list(back) == ["x", "y", "c.x"]
        assert all(
            torch.allclose(back[n][back[n] != 0], t[back[n] != 0]) for n, t in update.items()
        )
