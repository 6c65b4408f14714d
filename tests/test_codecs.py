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
