"""Wire codecs: a trainable state becomes a payload of bytes, and back; the bytes are counted.

Both ends agree on the state's schema (names and shapes) and on the codec when a run
starts, so a payload holds only values, indices and scales, tensor after tensor sorted by
name: its length is exactly what crosses the wire, and it is what the runtimes count.

A codec is named by a spec (``codec.up``, ``codec.down``):

- ``fp32`` (lossless), ``fp16``, ``bf16``: every value at that precision;
- ``int8``: values rounded to 255 levels of a per-tensor absmax scale (an fp32 each);
  ``int8:row`` scales each row of a matrix on its own; ``:sr`` rounds stochastically
  (unbiased), e.g. ``int8:row:sr``;
- ``topk:F``: per tensor, only the fraction ``F`` of values of largest magnitude (at least
  one) with their indices (the smallest unsigned integer type that indexes the tensor);
  the kept values go through a value codec, ``topk:F+int8`` (fp32 without one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from fedpet.config import Config
from fedpet.errors import require
from fedpet.registry import Registry
from fedpet.state import Schema, TrainableState, add, schema, subtract

SPEC_HELP = (
    "fp32, fp16, bf16, int8[:row][:sr], or topk:F[+fp16|+bf16|+int8[:row][:sr]] "
    "with a fraction F in (0, 1]"
)


class Values(Protocol):
    """How one tensor's values are written: a fixed number of bytes for a given shape."""

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of ``shape``."""
        ...

    def pack(self, t: torch.Tensor, gen: torch.Generator) -> bytes:
        """The tensor's bytes."""
        ...

    def unpack(self, buf: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """The fp32 tensor of ``shape`` read back from exactly :meth:`nbytes` bytes.

        ValueError for bytes that :meth:`pack` could not have written.
        """
        ...


FLOATS = {
    "fp32": ("<f4", torch.float32),
    "fp16": ("<f2", torch.float16),
    "bf16": ("<i2", torch.bfloat16),
}


@dataclass(frozen=True)
class Floats:
    """Values at a float precision, little-endian: fp32 (lossless), fp16 or bf16."""

    name: str

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Four or two bytes per value."""
        return math.prod(shape) * np.dtype(FLOATS[self.name][0]).itemsize

    def pack(self, t: torch.Tensor, gen: torch.Generator) -> bytes:
        """The values rounded to nearest at the precision (bf16 as its 16 bits)."""
        wire, dtype = FLOATS[self.name]
        cast = t.detach().reshape(-1).to(dtype)
        if dtype == torch.bfloat16:
            cast = cast.view(torch.int16)
        return cast.numpy().astype(wire, copy=False).tobytes()

    def unpack(self, buf: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """The values widened to fp32."""
        wire, dtype = FLOATS[self.name]
        raw = torch.from_numpy(np.frombuffer(buf, dtype=wire).astype(wire[1:]))
        if dtype == torch.bfloat16:
            raw = raw.view(torch.bfloat16)
        return raw.to(torch.float32).reshape(shape)


def _rows(shape: tuple[int, ...], per_row: bool) -> int:
    return shape[0] if per_row and len(shape) >= 2 else 1


@dataclass(frozen=True)
class Int8:
    """Absmax int8: ``q = round(x / s)`` in [-127, 127] with ``s = max|x| / 127`` (fp32).

    One scale per tensor, or per row of a matrix (``per_row``); ``stochastic`` rounds up
    with probability equal to the fractional part, so the rounding is unbiased.
    """

    per_row: bool = False
    stochastic: bool = False

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """One byte per value and four per scale."""
        return math.prod(shape) + 4 * _rows(shape, self.per_row)

    def pack(self, t: torch.Tensor, gen: torch.Generator) -> bytes:
        """The scales, then the quantized values."""
        rows = _rows(tuple(t.shape), self.per_row)
        x = t.detach().to(torch.float32).reshape(rows, -1)
        scale = x.abs().amax(dim=1) / 127 if x.shape[1] else torch.zeros(rows)
        y = x / torch.where(scale > 0, scale, 1.0)[:, None]
        if self.stochastic:
            y = torch.floor(y + torch.rand(y.shape, generator=gen))
        q = torch.round(y).clamp_(-127, 127).to(torch.int8)
        return scale.numpy().astype("<f4").tobytes() + q.numpy().tobytes()

    def unpack(self, buf: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """Each value times its scale."""
        rows = _rows(shape, self.per_row)
        scale = torch.from_numpy(np.frombuffer(buf, dtype="<f4", count=rows).astype(np.float32))
        if not bool((scale >= 0).all() and torch.isfinite(scale).all()):  # NaN fails >= 0
            raise ValueError("an int8 scale is negative, NaN or infinite")
        q = torch.from_numpy(np.frombuffer(buf, dtype=np.int8, offset=4 * rows).copy())
        return (q.reshape(rows, -1).to(torch.float32) * scale[:, None]).reshape(shape)


def _index_type(n: int) -> str:
    return "<u1" if n <= 2**8 else "<u2" if n <= 2**16 else "<u4"


@dataclass(frozen=True)
class TopK:
    """The ``fraction`` of a tensor's values of largest magnitude, with their indices.

    Indices (ascending) take the smallest unsigned type that indexes the tensor; the kept
    values are written by ``values``; the others decode to zero.
    """

    fraction: float
    values: Values

    def kept(self, n: int) -> int:
        """Values kept of ``n``: the fraction rounded up, at least one."""
        return min(n, max(1, math.ceil(self.fraction * n - 1e-9)))

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Indices and kept values."""
        n = math.prod(shape)
        k = self.kept(n)
        return k * np.dtype(_index_type(n)).itemsize + self.values.nbytes((k,))

    def pack(self, t: torch.Tensor, gen: torch.Generator) -> bytes:
        """The kept indices, then their values."""
        flat = t.detach().reshape(-1)
        k = self.kept(flat.numel())
        index = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
        wire = index.numpy().astype(_index_type(flat.numel())).tobytes()
        return wire + self.values.pack(flat[index], gen)

    def unpack(self, buf: bytes, shape: tuple[int, ...]) -> torch.Tensor:
        """Zeros but at the kept indices; ValueError unless they are as :meth:`pack` writes."""
        n = math.prod(shape)
        k = self.kept(n)
        kind = _index_type(n)
        index = torch.from_numpy(np.frombuffer(buf, dtype=kind, count=k).astype(np.int64))
        if int(index[-1]) >= n or bool((index[1:] <= index[:-1]).any()):
            raise ValueError(f"top-k indices are not ascending, distinct and below {n}")
        kept = self.values.unpack(buf[k * np.dtype(kind).itemsize :], (k,))
        out = torch.zeros(n)
        out[index] = kept
        return out.reshape(shape)


@dataclass(frozen=True)
class Codec:
    """Encodes a trainable state to bytes and decodes it given the agreed schema.

    Each tensor's values, in schema order, are written by one :class:`Values`.
    """

    spec: str
    values: Values

    def encode(self, state: TrainableState, seed: int = 0) -> bytes:
        """Concatenate every tensor's bytes, by name; ``seed`` drives random rounding."""
        gen = torch.Generator().manual_seed(seed)
        return b"".join(self.values.pack(state[name], gen) for name in sorted(state))

    def decode(self, payload: bytes, schema: Schema) -> TrainableState:
        """Split the payload by each tensor's size and read the tensors back, in schema order.

        Tensors travel sorted by name, so the order a state's dict happens to have never
        matters. A payload is a client's word: ValueError (naming the tensor) for one that
        the codec could not have written, whatever went wrong reading it.
        """
        shapes = dict(schema)
        sizes = {name: self.values.nbytes(shape) for name, shape in schema}
        if len(payload) != sum(sizes.values()):
            raise ValueError(
                f"{self.spec} payload has {len(payload)} bytes, "
                f"the schema needs {sum(sizes.values())}"
            )
        read: TrainableState = {}
        offset = 0
        for name in sorted(shapes):
            part = payload[offset : offset + sizes[name]]
            try:
                read[name] = self.values.unpack(part, shapes[name])
            except Exception as exc:  # a registered codec's reader may raise anything
                raise ValueError(f"{name}: {exc}") from None
            offset += sizes[name]
        return {name: read[name] for name in shapes}

    def state_dict(self) -> TrainableState:
        """What the codec keeps for the client it last encoded for: nothing."""
        return {}

    def load_state_dict(self, state: TrainableState) -> None:
        """Nothing to load (see :meth:`state_dict`)."""


@dataclass(frozen=True)
class Feedback(Codec):
    """Error feedback around a lossy codec: what an encoding drops is sent in later rounds.

    :meth:`encode` writes ``state + residual`` and keeps what that encoding lost as the
    new residual, so over the rounds what was sent plus the last residual is exactly the
    sum of the states given. The residual is the client's: the client half loads it
    (:meth:`load_state_dict`) before encoding and saves it (:meth:`state_dict`) after.
    """

    residual: TrainableState = field(default_factory=dict, compare=False)

    def encode(self, state: TrainableState, seed: int = 0) -> bytes:
        """The payload of ``state`` plus the residual; the residual becomes what it lost."""
        total = add(state, self.residual) if self.residual else state
        payload = super().encode(total, seed)
        lost = subtract(total, self.decode(payload, schema(total)))
        self.load_state_dict(lost)
        return payload

    def state_dict(self) -> TrainableState:
        """The residual: what the last encoding lost."""
        return dict(self.residual)

    def load_state_dict(self, state: TrainableState) -> None:
        """Continue from a client's residual (empty: none yet)."""
        self.residual.clear()
        self.residual.update(state)


CODECS: Registry[Values] = Registry("codec", "fedpet.codecs", {})
"""Value codecs users add (``register_codec``, or the ``fedpet.codecs`` entry points)."""


def register_codec(name: str, values: Values) -> None:
    """Make a value codec available as the spec ``name`` (alone, or after ``topk:F+``).

    ``values`` implements :class:`Values`: its ``nbytes`` must be exactly what ``pack``
    writes, since byte counts and decoding rely on it.
    """
    CODECS.register(name, values)


def _values(spec: str) -> Values:
    if spec in CODECS:
        return CODECS[spec]
    name, *options = spec.split(":")
    if name in FLOATS and not options:
        return Floats(name)
    if name == "int8" and len(set(options)) == len(options) and set(options) <= {"row", "sr"}:
        return Int8(per_row="row" in options, stochastic="sr" in options)
    raise ValueError(spec)


def get_codec(spec: str) -> Codec:
    """The codec a spec names; ValueError (with the allowed specs) for a bad one."""
    try:
        if not spec.startswith("topk:"):
            return Codec(spec, _values(spec))
        head, _, tail = spec.partition("+")
        fraction = float(head.removeprefix("topk:"))
        if not 0 < fraction <= 1:
            raise ValueError(spec)
        return Codec(spec, TopK(fraction, _values(tail or "fp32")))
    except ValueError:
        raise ValueError(f"{spec!r} is not a codec: use {spec_help()}") from None


def upload_codec(cfg: Config) -> Codec:
    """The clients' upload codec: ``codec.up``, with error feedback when it is on."""
    codec = get_codec(cfg.codec.up)
    return Feedback(codec.spec, codec.values) if cfg.codec.feedback else codec


def spec_help() -> str:
    """The codec specs allowed, with the registered ones."""
    return SPEC_HELP + "".join(f", {name}" for name in CODECS)


def check_codecs(cfg: Config) -> None:
    """Both directions name a codec (the error names the allowed specs)."""
    for key in ("up", "down"):
        spec = getattr(cfg.codec, key)
        try:
            get_codec(spec)
        except ValueError:
            require(False, f"codec.{key}", spec, spec_help())
