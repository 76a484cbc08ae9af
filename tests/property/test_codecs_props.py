"""Property tests for the embedding codecs: round trips within the documented error bounds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crdt.codecs import (
    MAX_DIM,
    EmbeddingCodec,
    FloatVector,
    decode_embedding,
    encode_embedding,
    max_abs_error,
)

F16_MAX = 65504.0

# Components: zero, tiny (float16 subnormal range and below), ordinary, and up to float16 max.
magnitudes = st.one_of(
    st.just(0.0),
    st.floats(2.0**-27, 2.0**-10, width=32),
    st.floats(2.0**-10, 128.0, width=32),
    st.floats(128.0, F16_MAX, width=32),
)
components = st.tuples(magnitudes, st.booleans()).map(lambda p: -p[0] if p[1] else p[0])

small_vectors = hnp.arrays(np.float32, st.integers(1, 24), elements=components)


@st.composite
def large_vectors(draw: st.DrawFn) -> FloatVector:
    """A vector of any dimension up to MAX_DIM, drawn from a seeded generator."""
    dim = draw(st.one_of(st.integers(1, MAX_DIM), st.sampled_from([1, MAX_DIM - 1, MAX_DIM])))
    seed = draw(st.integers(0, 2**32 - 1))
    log_scale = draw(st.floats(-6.0, 4.0))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "uniform", "sparse", "spike"]))
    if kind == "normal":
        vec = rng.standard_normal(dim)
    elif kind == "uniform":
        vec = rng.uniform(-1.0, 1.0, dim)
    elif kind == "sparse":
        vec = rng.standard_normal(dim) * (rng.random(dim) < 0.1)
    else:
        vec = rng.standard_normal(dim) * 1e-3
        vec[rng.integers(dim)] = 1.0
    vec = np.clip(vec * 10.0**log_scale, -F16_MAX, F16_MAX)
    return vec.astype(np.float32)


@st.composite
def half_step_vectors(draw: st.DrawFn) -> FloatVector:
    """Components on i8 rounding ties (k + 1/2 steps): worst case for the i8 bound."""
    peak = draw(st.floats(2.0**-20, F16_MAX, width=32))
    steps = draw(st.lists(st.integers(-127, 126), min_size=1, max_size=16))
    values = [peak] + [(k + 0.5) * peak / 127.0 for k in steps]
    return np.array(draw(st.permutations(values)), dtype=np.float32)


vectors = st.one_of(small_vectors, small_vectors, large_vectors(), half_step_vectors())
codecs = st.sampled_from(list(EmbeddingCodec))


def round_trip(vec: FloatVector, codec: EmbeddingCodec) -> FloatVector:
    data = encode_embedding(vec, codec)
    expected_len = {EmbeddingCodec.F32: 4, EmbeddingCodec.F16: 2, EmbeddingCodec.I8: 1}[codec]
    overhead = 4 if codec is EmbeddingCodec.I8 else 0
    assert len(data) == expected_len * vec.shape[0] + overhead
    out = decode_embedding(data, codec, vec.shape[0])
    assert out.dtype == np.float32
    assert out.shape == vec.shape
    return out


@settings(max_examples=200)
@given(vectors)
def test_f32_round_trip_is_exact(vec: FloatVector) -> None:
    out = round_trip(vec, EmbeddingCodec.F32)
    assert out.tobytes() == vec.tobytes()
    assert max_abs_error(vec, EmbeddingCodec.F32) == 0.0


@settings(max_examples=200)
@given(vectors, st.sampled_from([EmbeddingCodec.F16, EmbeddingCodec.I8]))
def test_lossy_round_trip_within_documented_bound(vec: FloatVector, codec: EmbeddingCodec) -> None:
    out = round_trip(vec, codec)
    err = float(np.max(np.abs(out.astype(np.float64) - vec.astype(np.float64))))
    bound = max_abs_error(vec, codec)
    assert err <= bound, f"{codec}: error {err!r} above bound {bound!r}"

    # The bound itself must stay tight: the documented contract, plus float32 rounding.
    peak = float(np.max(np.abs(vec.astype(np.float64))))
    if codec is EmbeddingCodec.F16:
        assert bound <= peak * 2.0**-11 * (1 + 1e-6) + 2.0**-24
    else:
        assert bound <= (peak / 127.0) / 2.0 * (1 + 1e-4) + 1e-30


@settings(max_examples=200)
@given(vectors, codecs)
def test_zero_stays_zero_and_signs_are_kept(vec: FloatVector, codec: EmbeddingCodec) -> None:
    out = round_trip(vec, codec)
    assert np.all(out[vec == 0] == 0)
    assert np.all(np.sign(out) * np.sign(vec) >= 0)


@settings(max_examples=200)
@given(vectors, codecs)
def test_re_encoding_decoded_vector_is_stable(vec: FloatVector, codec: EmbeddingCodec) -> None:
    once = round_trip(vec, codec)
    twice = round_trip(once, codec)
    assert twice.tobytes() == once.tobytes()
    assert encode_embedding(twice, codec) == encode_embedding(once, codec)


@settings(max_examples=100)
@given(st.integers(64, MAX_DIM), st.integers(0, 2**32 - 1), st.floats(-4.0, 4.0))
def test_i8_keeps_cosine_similarity_of_gaussian_vectors(dim: int, seed: int, log_s: float) -> None:
    rng = np.random.default_rng(seed)
    vec = (rng.standard_normal(dim) * 10.0**log_s).astype(np.float32)
    out = round_trip(vec, EmbeddingCodec.I8)
    a = vec.astype(np.float64)
    b = out.astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cosine >= 0.99
