"""Unit tests for embedding validation and the f32 / f16 / i8 codecs."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from crdt.codecs import (
    MAX_DIM,
    EmbeddingCodec,
    as_vector,
    decode_embedding,
    encode_embedding,
    max_abs_error,
)
from crdt.errors import InvalidItemError
from crdt.memory import NewItem, TieredMemory

F32, F16, I8 = EmbeddingCodec.F32, EmbeddingCodec.F16, EmbeddingCodec.I8


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# --- as_vector --------------------------------------------------------------------------


def test_as_vector_returns_float32_1d() -> None:
    out = as_vector([1, 2.5, -3])
    assert out.dtype == np.float32
    assert out.shape == (3,)
    assert out.tolist() == [1.0, 2.5, -3.0]
    assert as_vector(np.arange(4, dtype=np.float64)).dtype == np.float32


@pytest.mark.parametrize("dim", [1, MAX_DIM])
def test_as_vector_accepts_dimension_limits(dim: int) -> None:
    assert as_vector([0.5] * dim).shape == (dim,)


@pytest.mark.filterwarnings("error")  # refused with a clear error, not a numpy warning
@pytest.mark.parametrize(
    "values",
    [
        [float("nan")],
        [1.0, float("nan"), 2.0],
        [float("inf")],
        [0.0, float("-inf")],
        [3.5e38, 1e40],  # overflows float32 to inf
        [[1.0, 2.0], [3.0, 4.0]],
        [[1.0]],
        1.0,
        [],
        np.zeros((0,), dtype=np.float32),
        [0.1] * (MAX_DIM + 1),
        "abc",
        ["x", "y"],
        [[1.0], [2.0, 3.0]],
        {"a": 1.0},
        object(),
        [10**400],
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, list) else f"list{len(v)}",
)
def test_as_vector_rejects_bad_embeddings(values: object) -> None:
    with pytest.raises(InvalidItemError):
        as_vector(values)


def test_a_value_past_float32_range_is_named_in_the_error() -> None:
    with pytest.raises(InvalidItemError, match="past float32's range"):
        as_vector([1.0, 1e40])


@pytest.mark.filterwarnings("error")  # numpy's overflow warning would fail the test
def test_a_float64_array_past_float32_range_is_refused_quietly_on_the_batch_path() -> None:
    memory = TieredMemory(node_id="0123456789abcdef", client_ids={"L1": 1, "L2": 2, "L3": 3})
    item = NewItem(tier="L1", content="x", id="a", embedding=np.array([1.0, 1e40]))
    with pytest.raises(InvalidItemError, match="past float32's range"):
        memory.put_many([item], 1_000)
    assert memory.count("L1") == 0


def test_as_vector_respects_custom_max_dim() -> None:
    assert as_vector([1.0] * 8, max_dim=8).shape == (8,)
    with pytest.raises(InvalidItemError):
        as_vector([1.0] * 9, max_dim=8)


# --- encode / decode --------------------------------------------------------------------


def test_f32_is_little_endian_float32() -> None:
    data = encode_embedding(vec(1.0, -2.0), F32)
    assert data == struct.pack("<2f", 1.0, -2.0)
    assert decode_embedding(data, F32, 2).tolist() == [1.0, -2.0]


def test_f16_is_little_endian_float16() -> None:
    data = encode_embedding(vec(1.0, -2.0, 65504.0), F16)
    assert data == struct.pack("<3e", 1.0, -2.0, 65504.0)
    assert decode_embedding(data, F16, 3).tolist() == [1.0, -2.0, 65504.0]


def test_i8_layout_is_scale_then_int8() -> None:
    data = encode_embedding(vec(127.0, -63.5, 0.0, 1.0), I8)
    assert len(data) == 4 + 4
    (scale,) = struct.unpack_from("<f", data)
    assert scale == 1.0
    assert list(struct.unpack_from("<4b", data, 4)) == [127, -64, 0, 1]
    assert decode_embedding(data, I8, 4).tolist() == [127.0, -64.0, 0.0, 1.0]


def test_i8_all_zero_vector() -> None:
    out = decode_embedding(encode_embedding(vec(0.0, 0.0, 0.0), I8), I8, 3)
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_i8_error_within_half_step() -> None:
    v = vec(1.0, 0.3, -0.77, 0.004)
    out = decode_embedding(encode_embedding(v, I8), I8, 4)
    step = 1.0 / 127
    assert np.all(np.abs(out.astype(np.float64) - v) <= step / 2 * 1.0001)
    assert out[0] == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("bad", [65505.0, -65505.0, 70000.0, 1e30])
def test_f16_rejects_values_beyond_range(bad: float) -> None:
    with pytest.raises(InvalidItemError):
        encode_embedding(vec(0.0, bad), F16)


def test_f16_accepts_its_maximum() -> None:
    out = decode_embedding(encode_embedding(vec(-65504.0, 65504.0), F16), F16, 2)
    assert out.tolist() == [-65504.0, 65504.0]


def test_f32_and_i8_accept_values_beyond_f16_range() -> None:
    v = vec(1e30, -2e30)
    assert decode_embedding(encode_embedding(v, F32), F32, 2).tolist() == v.tolist()
    out = decode_embedding(encode_embedding(v, I8), I8, 2)
    err = np.abs(out.astype(np.float64) - v.astype(np.float64))
    assert np.all(err <= max_abs_error(v, I8))


@pytest.mark.parametrize("codec", list(EmbeddingCodec))
@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_decode_with_wrong_length_raises_value_error(codec: EmbeddingCodec, delta: int) -> None:
    data = encode_embedding(vec(1.0, 2.0, 3.0, 4.0), codec)
    with pytest.raises(ValueError):
        decode_embedding(data[:delta] if delta < 0 else data + b"\0" * delta, codec, 4)
    with pytest.raises(ValueError):
        decode_embedding(data, codec, 5)
    with pytest.raises(ValueError):
        decode_embedding(data, codec, 3)


@pytest.mark.parametrize("codec", list(EmbeddingCodec))
def test_decode_of_empty_input_raises(codec: EmbeddingCodec) -> None:
    with pytest.raises(ValueError):
        decode_embedding(b"", codec, 1)
    with pytest.raises(ValueError):
        decode_embedding(b"", codec, 0)


@pytest.mark.parametrize("codec", list(EmbeddingCodec))
@pytest.mark.parametrize("dim", [0, MAX_DIM + 1, -1])
def test_decode_rejects_dimension_outside_limits(codec: EmbeddingCodec, dim: int) -> None:
    per = {F32: 4, F16: 2, I8: 1}[codec]
    size = per * dim + (4 if codec is I8 else 0)
    with pytest.raises(ValueError):
        decode_embedding(b"\0" * max(size, 0), codec, dim)


def test_max_abs_error_values() -> None:
    v = vec(2.0, -127.0)
    assert max_abs_error(v, F32) == 0.0
    assert max_abs_error(v, F16) == pytest.approx(127.0 * 2.0**-11 + 2.0**-24)
    assert max_abs_error(v, I8) == pytest.approx(0.5, rel=1e-4)
    assert max_abs_error(v, I8) >= 0.5


def test_codec_values_are_wire_names() -> None:
    assert [c.value for c in EmbeddingCodec] == ["f32", "f16", "i8"]
    assert EmbeddingCodec("i8") is I8
