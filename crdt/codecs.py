"""Embedding codecs for the wire and the tier documents: float32, float16, int8 with scale.

Round-trip error (documented contract, checked by the property tests):

- ``f32``: exact.
- ``f16``: relative error at most 2**-11 per component for magnitudes in float16's normal
  range (about 6.1e-5 to 65504); values beyond 65504 are rejected, not clipped.
- ``i8``: per-vector scale ``s = max|x| / 127``; each component is off by at most ``s / 2``
  (half a quantisation step) plus float32 rounding of the scale, the quotient and the
  product (at most ``max|x| * 2**-22`` together). Cosine similarity to the original stays
  above 0.99 for vectors of 64 dimensions or more with no dominant outlier.
"""

from __future__ import annotations

import struct
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from crdt.errors import InvalidItemError

FloatVector = npt.NDArray[np.float32]

MAX_DIM = 4096
_F16_MAX = float(np.finfo(np.float16).max)
_SCALE = struct.Struct("<f")


class EmbeddingCodec(StrEnum):
    """How an embedding is encoded: full float32, half float16, or int8 with a scale."""

    F32 = "f32"
    F16 = "f16"
    I8 = "i8"


def as_vector(values: object, *, max_dim: int = MAX_DIM) -> FloatVector:
    """Return `values` as a finite 1-D float32 vector, or raise InvalidItemError."""
    try:
        with np.errstate(over="ignore"):  # a value past float32's range is refused below
            vec = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidItemError(f"embedding is not numeric: {exc}") from None
    if vec.ndim != 1:
        raise InvalidItemError(f"embedding must be 1-D, got shape {vec.shape}")
    if not 1 <= vec.shape[0] <= max_dim:
        raise InvalidItemError(f"embedding dimension {vec.shape[0]} outside 1..{max_dim}")
    if not np.isfinite(vec).all():
        raise InvalidItemError("embedding contains NaN, infinity or a value past float32's range")
    return vec


def encode_embedding(vec: FloatVector, codec: EmbeddingCodec) -> bytes:
    """Encode a finite float32 vector with `codec` (little-endian)."""
    if codec is EmbeddingCodec.F32:
        raw: bytes = vec.astype("<f4", copy=False).tobytes()
        return raw
    if codec is EmbeddingCodec.F16:
        if vec.size and float(np.abs(vec).max()) > _F16_MAX:
            raise InvalidItemError("embedding value exceeds float16 range (65504); use f32")
        return vec.astype("<f2").tobytes()
    peak = float(np.abs(vec).max()) if vec.size else 0.0
    scale = peak / 127.0
    if np.float32(scale) == 0:  # a zero vector, or the stored float32 scale underflows
        scale = 1.0  # (then re-encoding what readers see gives these bytes again)
    quantised: npt.NDArray[np.int8] = np.clip(np.rint(vec / scale), -127, 127).astype(np.int8)
    return _SCALE.pack(scale) + quantised.tobytes()


def decode_embedding(data: bytes, codec: EmbeddingCodec, dim: int) -> FloatVector:
    """Decode bytes written by `encode_embedding`; raise ValueError if the size is wrong."""
    if codec is EmbeddingCodec.F32:
        expected = 4 * dim
    elif codec is EmbeddingCodec.F16:
        expected = 2 * dim
    else:
        expected = 4 + dim
    if len(data) != expected or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"{codec.value} embedding of dim {dim} needs {expected} bytes")
    if codec is EmbeddingCodec.F32:
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if codec is EmbeddingCodec.F16:
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    (scale,) = _SCALE.unpack_from(data)
    ints = np.frombuffer(data, dtype=np.int8, offset=4)
    return (ints.astype(np.float32) * np.float32(scale)).astype(np.float32)


def max_abs_error(vec: FloatVector, codec: EmbeddingCodec) -> float:
    """Return the documented worst-case per-component error bound of `codec` for `vec`."""
    if codec is EmbeddingCodec.F32 or not vec.size:
        return 0.0
    peak = float(np.abs(vec).max())
    if codec is EmbeddingCodec.F16:
        # 2**-11 relative, plus float16's smallest subnormal step for tiny values.
        return peak * 2.0**-11 + 2.0**-24
    # Half a step, plus float32 rounding: the scale is stored as float32 (relative 2**-24),
    # x / scale is rounded in float32 (|x / scale| <= 127) and so is q * scale (<= peak):
    # together below peak * 2**-23; 2**-22 leaves a factor of two. The last term covers
    # a scale that underflows float32's normal range.
    return (peak / 127.0) / 2.0 + peak * 2.0**-22 + 2.0**-140
