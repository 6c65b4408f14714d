"""Wire codecs: a trainable state becomes a payload of bytes, and back; the bytes are counted.

Both ends agree on the state's schema (names and shapes, in order) when a run starts; a payload
holds only the encoded values, so its length is exactly what crosses the wire each time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from fedpet.state import Schema, TrainableState


class Codec(Protocol):
    """Encodes a trainable state to bytes and decodes it given the agreed schema."""

    name: str

    def encode(self, state: TrainableState) -> bytes:
        """Serialize the state's values (in schema order) to a payload."""
        ...

    def decode(self, payload: bytes, schema: Schema) -> TrainableState:
        """Rebuild the state from a payload produced by :meth:`encode`."""
        ...


class Float32Codec:
    """Raw little-endian fp32 values, 4 bytes per scalar: lossless for fp32 state."""

    name = "fp32"

    def encode(self, state: TrainableState) -> bytes:
        """Concatenate all tensors as fp32 bytes."""
        flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in state.values()])
        return flat.numpy().astype("<f4", copy=False).tobytes()

    def decode(self, payload: bytes, schema: Schema) -> TrainableState:
        """Split the fp32 buffer back into named tensors of the schema's shapes."""
        expected = 4 * sum(int(np.prod(shape)) for _, shape in schema)
        if len(payload) != expected:
            raise ValueError(f"fp32 payload has {len(payload)} bytes, the schema needs {expected}")
        flat = torch.from_numpy(np.frombuffer(payload, dtype="<f4").copy())
        out: TrainableState = {}
        offset = 0
        for name, shape in schema:
            n = int(np.prod(shape))
            out[name] = flat[offset : offset + n].view(shape)
            offset += n
        return out


CODECS: dict[str, type[Codec]] = {"fp32": Float32Codec}


def get_codec(name: str) -> Codec:
    """Instantiate the codec registered under ``name``."""
    return CODECS[name]()
