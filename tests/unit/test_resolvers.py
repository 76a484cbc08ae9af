"""Unit and property tests for the built-in conflict resolvers and their configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.codecs import EmbeddingCodec
from crdt.config import MemoryConfig
from crdt.hlc import Timestamp
from crdt.item import Limits, MemoryItem, build_item
from crdt.memory import NewItem, TieredMemory
from crdt.resolvers import (
    BUILTIN_RESOLVERS,
    confidence_vote,
    lww,
    max_confidence,
    merge,
    resolver_named,
    union,
)

T = Timestamp


def version(
    updated: Timestamp,
    author: str,
    *,
    content: str | None = None,
    confidence: float = 0.5,
    tags: Sequence[str] = (),
    citations: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    embedding: Sequence[float] | None = None,
) -> MemoryItem:
    return build_item(
        item_id="item",
        tier="L2",
        content=f"{author}@{updated}" if content is None else content,
        embedding=embedding,
        metadata=metadata,
        tags=list(tags),
        citations=list(citations),
        confidence=confidence,
        created=T(1, 0),
        updated=updated,
        author=author,
        codec=EmbeddingCodec.F32,
        limits=Limits(),
    )


def by_order(versions: Sequence[MemoryItem]) -> list[MemoryItem]:
    """Sort the way the core does before calling a resolver."""
    return sorted(versions, key=lambda v: v.order_key)


# --- lww --------------------------------------------------------------------------------


def test_lww_picks_greatest_hlc() -> None:
    a = version(T(100, 0), "z")
    b = version(T(100, 1), "a")
    c = version(T(99, 999), "zz")
    assert lww([a, b, c]) is b
    assert lww([c, b, a]) is b


def test_lww_breaks_hlc_ties_by_author() -> None:
    a = version(T(100, 0), "node-a")
    b = version(T(100, 0), "node-b")
    assert lww([a, b]) is b
    assert lww([b, a]) is b


def test_lww_single_version() -> None:
    a = version(T(1, 0), "n")
    assert lww([a]) is a


# --- max --------------------------------------------------------------------------------


def test_max_picks_highest_confidence_even_if_older() -> None:
    old_sure = version(T(10, 0), "a", confidence=0.9)
    new_unsure = version(T(20, 0), "b", confidence=0.2)
    assert max_confidence([old_sure, new_unsure]) is old_sure
    assert max_confidence([new_unsure, old_sure]) is old_sure


def test_max_ties_go_to_last_writer() -> None:
    a = version(T(10, 0), "a", confidence=0.7)
    b = version(T(20, 0), "b", confidence=0.7)
    c = version(T(20, 0), "c", confidence=0.7)
    low = version(T(30, 0), "d", confidence=0.1)
    assert max_confidence([a, b, c, low]) is c
    assert max_confidence([c, low, b, a]) is c


# --- union ------------------------------------------------------------------------------


def test_union_of_tags_and_citations_on_last_writer() -> None:
    a = version(T(10, 0), "a", tags=["x", "y"], citations=["c1"], confidence=0.9)
    b = version(T(20, 0), "b", tags=["y", "z"], citations=["c2", "c1"], metadata={"k": 1})
    c = version(T(15, 0), "c", tags=[], citations=["c0"])
    out = union([a, b, c])
    assert out.tags == ("x", "y", "z")
    assert out.citations == ("c0", "c1", "c2")
    assert out.content == b.content
    assert out.metadata == {"k": 1}
    assert out.confidence == b.confidence
    assert out.order_key == b.order_key
    # The inputs are untouched.
    assert a.tags == ("x", "y") and b.tags == ("y", "z")


# --- merge ------------------------------------------------------------------------------


def test_merge_metadata_per_key_newest_wins() -> None:
    old = version(T(10, 0), "a", metadata={"a": 1, "b": 1, "keep": "old"})
    mid = version(T(20, 0), "a", metadata={"a": 3, "d": 3})
    new = version(T(30, 0), "b", metadata={"b": 2, "c": 2}, tags=["t"])
    expected = {"a": 3, "b": 2, "c": 2, "d": 3, "keep": "old"}
    for order in ([old, mid, new], [new, old, mid], [mid, new, old]):
        out = merge(order)
        assert out.metadata == expected
        assert out.content == new.content
        assert out.tags == ("t",)
    assert old.metadata == {"a": 1, "b": 1, "keep": "old"}


def test_merge_same_hlc_author_breaks_tie() -> None:
    a = version(T(10, 0), "a", metadata={"k": "from-a"})
    b = version(T(10, 0), "b", metadata={"k": "from-b"})
    assert merge([b, a]).metadata == {"k": "from-b"}
    assert merge([a, b]).metadata == {"k": "from-b"}


def test_merge_replaces_nested_values_whole() -> None:
    a = version(T(10, 0), "a", metadata={"n": {"x": 1, "y": 1}})
    b = version(T(20, 0), "b", metadata={"n": {"y": 2}})
    assert merge([a, b]).metadata == {"n": {"y": 2}}


# --- confidence_vote --------------------------------------------------------------------


def test_confidence_vote_winner_citations_and_weighted_mean() -> None:
    sure = version(
        T(10, 0), "a", confidence=0.9, embedding=[1.0, 0.0], citations=["c1"], tags=["sure"]
    )
    unsure = version(
        T(20, 0), "b", confidence=0.1, embedding=[0.0, 1.0], citations=["c2"], tags=["new"]
    )
    zero = version(T(30, 0), "c", confidence=0.0, embedding=[5.0, 5.0], citations=["c3"])
    other_dim = version(T(5, 0), "d", confidence=0.5, embedding=[9.0, 9.0, 9.0])
    no_emb = version(T(6, 0), "e", confidence=0.3, citations=["c0"])
    out = confidence_vote(by_order([sure, unsure, zero, other_dim, no_emb]))
    assert out.content == sure.content
    assert out.confidence == 0.9
    assert out.tags == ("sure",)
    assert out.citations == ("c0", "c1", "c2", "c3")
    assert out.embedding is not None
    assert out.embedding.dtype == np.float32
    np.testing.assert_allclose(out.embedding, [0.9, 0.1], rtol=1e-6)
    assert not out.embedding.flags.writeable


def test_confidence_vote_mean_formula() -> None:
    vs = [
        version(T(1, 0), "a", confidence=0.2, embedding=[1.0, 2.0, 3.0]),
        version(T(2, 0), "b", confidence=0.5, embedding=[-1.0, 0.0, 4.0]),
        version(T(3, 0), "c", confidence=0.3, embedding=[0.5, 0.5, 0.5]),
    ]
    w = np.array([0.2, 0.5, 0.3])
    e = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0], [0.5, 0.5, 0.5]])
    out = confidence_vote(vs)
    assert out.embedding is not None
    np.testing.assert_allclose(out.embedding, (w[:, None] * e).sum(0) / w.sum(), rtol=1e-6)
    assert out.order_key == vs[1].order_key


def test_confidence_vote_winner_without_embedding_keeps_none() -> None:
    a = version(T(1, 0), "a", confidence=0.9)
    b = version(T(2, 0), "b", confidence=0.5, embedding=[1.0])
    assert confidence_vote([a, b]).embedding is None


def test_confidence_vote_all_zero_weights_keeps_winner_embedding() -> None:
    a = version(T(1, 0), "a", confidence=0.0, embedding=[1.0, 1.0])
    b = version(T(2, 0), "b", confidence=0.0, embedding=[3.0, -1.0])
    out = confidence_vote([a, b])
    assert out.content == b.content
    assert out.embedding is not None
    assert out.embedding.tolist() == [3.0, -1.0]


def test_confidence_vote_single_same_dim_keeps_embedding() -> None:
    a = version(T(1, 0), "a", confidence=0.4, embedding=[1.0, 1.0, 1.0])
    b = version(T(2, 0), "b", confidence=0.8, embedding=[3.0, -1.0])
    out = confidence_vote([a, b])
    assert out.embedding is not None
    assert out.embedding.tolist() == [3.0, -1.0]


# --- registry and configuration ---------------------------------------------------------


def test_resolver_named_returns_builtins() -> None:
    assert resolver_named("lww") is lww
    assert resolver_named("max") is max_confidence
    assert resolver_named("union") is union
    assert resolver_named("merge") is merge
    assert resolver_named("confidence_vote") is confidence_vote
    assert set(BUILTIN_RESOLVERS) == {"lww", "max", "union", "merge", "confidence_vote"}


@pytest.mark.parametrize("name", ["", "LWW", "nope", "max_confidence", " lww"])
def test_resolver_named_unknown_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown resolver"):
        resolver_named(name)


def test_default_config_policies() -> None:
    config = MemoryConfig.default()
    assert config.policy("L1").resolver is lww
    assert config.policy("L2").resolver is merge
    assert config.policy("L3").resolver is confidence_vote
    assert [config.policy(t).codec for t in ("L1", "L2", "L3")] == [
        EmbeddingCodec.F32,
        EmbeddingCodec.F16,
        EmbeddingCodec.I8,
    ]
    with pytest.raises(KeyError):
        config.policy("L0")


def test_with_resolvers_by_name() -> None:
    config = MemoryConfig.with_resolvers(L1="union")
    default = MemoryConfig.default()
    assert config.policy("L1").resolver is union
    assert config.policy("L1").codec is EmbeddingCodec.F32
    assert config.policy("L1").tombstone_retention_ms == default.policy("L1").tombstone_retention_ms
    assert config.policy("L2").resolver is merge
    assert config.policy("L3").resolver is confidence_vote
    assert config.limits == default.limits


def test_with_resolvers_custom_function() -> None:
    calls: list[int] = []

    def first_writer(versions: Sequence[MemoryItem]) -> MemoryItem:
        calls.append(len(versions))
        return versions[0]

    config = MemoryConfig.with_resolvers(L3=first_writer, L2="max")
    assert config.policy("L3").resolver is first_writer
    assert config.policy("L3").codec is EmbeddingCodec.I8
    assert config.policy("L2").resolver is max_confidence
    assert config.policy("L1").resolver is lww
    a, b = version(T(1, 0), "a"), version(T(2, 0), "b")
    assert config.policy("L3").resolver([a, b]) is a
    assert calls == [2]


def test_with_resolvers_unknown_name_raises() -> None:
    with pytest.raises(ValueError):
        MemoryConfig.with_resolvers(L2="nope")


def test_with_resolvers_does_not_change_defaults() -> None:
    MemoryConfig.with_resolvers(L1="union")
    assert MemoryConfig.default().policy("L1").resolver is lww


# --- determinism (property) -------------------------------------------------------------

AUTHORS = ("a", "b", "c")
TAGS = ("t1", "t2", "t3", "t4")
KEYS = ("k1", "k2", "k3")


@st.composite
def version_sets(draw: st.DrawFn) -> list[MemoryItem]:
    """1-6 versions with distinct (HLC, author); confidences, tags and metadata collide."""
    keys = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from(AUTHORS)),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    out = []
    for wall, logical, author in keys:
        dim = draw(st.sampled_from([None, 2, 2, 3]))
        emb = (
            None
            if dim is None
            else draw(st.lists(st.floats(-10, 10, width=32), min_size=dim, max_size=dim))
        )
        out.append(
            version(
                T(wall, logical),
                author,
                content=draw(st.sampled_from(["x", "y", "z"])),
                confidence=draw(st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0])),
                tags=draw(st.lists(st.sampled_from(TAGS), max_size=3)),
                citations=draw(st.lists(st.sampled_from(TAGS), max_size=3)),
                metadata=draw(
                    st.dictionaries(st.sampled_from(KEYS), st.integers(0, 3), max_size=3)
                ),
                embedding=emb,
            )
        )
    return out


def same(a: MemoryItem, b: MemoryItem) -> bool:
    """Equal in every field, embeddings bit for bit."""
    emb_a = None if a.embedding is None else a.embedding.tobytes()
    emb_b = None if b.embedding is None else b.embedding.tobytes()
    return a == b and emb_a == emb_b and a.metadata == b.metadata


@settings(max_examples=60, deadline=None)
@given(
    writers=st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), min_size=2, unique=True),
    walls=st.lists(st.integers(1_000, 1_003), min_size=4, max_size=4),
    arrival=st.randoms(use_true_random=False),
)
def test_a_custom_resolver_gets_versions_in_last_writer_order_on_every_replica(
    writers: list[str], walls: list[int], arrival: Any
) -> None:
    """The contract custom resolvers rely on: the versions come sorted by (HLC, author),
    however they arrived, so even an order-dependent resolver converges."""
    seen: list[list[tuple[Timestamp, str]]] = []

    def first_writer(versions: Sequence[MemoryItem]) -> MemoryItem:
        seen.append([v.order_key for v in versions])
        return versions[0]  # depends on the order it is given

    config = MemoryConfig.with_resolvers(L3=first_writer)
    updates = []
    for index, writer in enumerate(writers):  # concurrent writes of one id
        ids = {"L1": 10 + index, "L2": 20 + index, "L3": 30 + index}
        memory = TieredMemory(node_id=writer, client_ids=ids, config=config)
        change = memory.put(NewItem("L3", f"by {writer}", "x"), walls[index])
        updates.extend(update for tier, update in change.updates if tier == "L3")
    results = []
    for replica in range(2):
        ids = {"L1": 90 + replica, "L2": 92 + replica, "L3": 94 + replica}
        memory = TieredMemory(node_id=f"r{replica}", client_ids=ids, config=config)
        order = list(updates)
        arrival.shuffle(order)
        for update in order:
            memory.apply_remote("L3", update, 2_000)
        results.append(memory.get("x").content)
    assert seen and all(keys == sorted(keys) for keys in seen)
    assert results[0] == results[1]


@settings(max_examples=200)
@given(version_sets(), st.data())
def test_selection_resolvers_ignore_input_order(
    versions: list[MemoryItem], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(versions))
    for resolver in (lww, max_confidence, union, merge):
        assert same(resolver(shuffled), resolver(by_order(versions))), resolver.__name__
    got = confidence_vote(shuffled)
    expected = confidence_vote(by_order(versions))
    assert got.content == expected.content and got.citations == expected.citations
    if expected.embedding is None:
        assert got.embedding is None
    else:
        assert got.embedding is not None
        np.testing.assert_allclose(got.embedding, expected.embedding, rtol=1e-5, atol=1e-5)


@settings(max_examples=200)
@given(version_sets())
def test_resolver_results_match_their_definitions(versions: list[MemoryItem]) -> None:
    ordered = by_order(versions)
    newest = ordered[-1]
    best = max(v.confidence for v in versions)
    best_newest = [v for v in ordered if v.confidence == best][-1]
    all_tags = tuple(sorted({t for v in versions for t in v.tags}))
    all_citations = tuple(sorted({c for v in versions for c in v.citations}))

    assert lww(ordered) is newest
    assert max_confidence(ordered) is best_newest

    u = union(ordered)
    assert (u.content, u.order_key) == (newest.content, newest.order_key)
    assert u.tags == all_tags and u.citations == all_citations

    m = merge(ordered)
    assert m.order_key == newest.order_key
    for key in KEYS:
        holders = [v for v in ordered if key in v.metadata]
        if holders:
            assert m.metadata[key] == holders[-1].metadata[key]
        else:
            assert key not in m.metadata

    cv = confidence_vote(ordered)
    assert cv.order_key == best_newest.order_key
    assert cv.citations == all_citations
    assert cv.tags == best_newest.tags
    if best_newest.embedding is None:
        assert cv.embedding is None
    else:
        dim = best_newest.embedding.shape
        pool = [v for v in ordered if v.embedding is not None and v.embedding.shape == dim]
        weights = np.array([v.confidence for v in pool])
        assert cv.embedding is not None
        if len(pool) > 1 and weights.sum() > 0:
            stacked = np.stack([v.embedding for v in pool if v.embedding is not None])
            mean = (weights[:, None] * stacked.astype(np.float64)).sum(0) / weights.sum()
            np.testing.assert_allclose(cv.embedding, mean, rtol=1e-5, atol=1e-5)
        else:
            assert cv.embedding.tobytes() == best_newest.embedding.tobytes()
