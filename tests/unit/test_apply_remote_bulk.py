"""`apply_remote` takes ids new to every tier in bulk; everything observable must equal the
general path's: items, versions, digests, tombstones, conflicts, index, search scores bit for
bit, events (kind, order, seq, hlc, author), counters, the clock and the persisted updates.

Senders write raw records straight into their tier documents, so the receivers see every
shape: live records with and without embeddings (each codec, several dimensions), with
metadata, tags and citations, tombstones, moved versions, and corrupt records of many kinds,
mixed with ids the receiver already holds and with concurrent versions.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.codecs import EmbeddingCodec
from crdt.hlc import Timestamp
from crdt.item import Limits, build_item, live_record_text, scan_live_records, to_record, tombstone
from crdt.memory import Change, TieredMemory, _NewLive
from crdt.yslice import plan_slices

TIERS = ("L1", "L2", "L3")


def memory(node: str, offset: int) -> TieredMemory:
    return TieredMemory(node_id=node, client_ids={t: offset + i for i, t in enumerate(TIERS)})


def general(m: TieredMemory, monkeypatch: pytest.MonkeyPatch) -> TieredMemory:
    """Make `m` take the general path for every id."""
    monkeypatch.setattr(m, "_take_new_live", lambda *args: _NewLive([], [], [], []))
    return m


def record_for(rng: random.Random, item_id: str, author: str) -> str:
    """A record of a random shape, valid or corrupt."""
    codec = rng.choice(list(EmbeddingCodec))
    dim = rng.choice([1, 3, 8, 8, 8, 16])
    vector = None
    if rng.random() < 0.8:
        scale = rng.choice([0.0, 1e-3, 1.0, 50.0])
        vector = (
            np.random.default_rng(rng.randrange(1 << 30)).standard_normal(dim) * scale
        ).astype(np.float32)
    wall = rng.randrange(10**6)
    stamp = Timestamp(wall, rng.randrange(5))
    item = build_item(
        item_id=item_id,
        tier="L3",
        content=rng.choice(["c", "", "é\u2028x", 'quote"', "back\\slash", "tab\t"]),
        embedding=vector,
        metadata=rng.choice([None, None, {"k": [1, 2]}, {"": None}]),
        tags=rng.choice([(), (), ("t",), ("a", "b")]),
        citations=rng.choice([(), (), ("c",)]),
        confidence=rng.choice([1.0, 0.5, 0, 1, 0.25]),
        created=stamp,
        updated=stamp,
        author=author,
        codec=codec,
        limits=Limits(),
    )
    shape = rng.random()
    if shape < 0.1:
        return to_record(tombstone(item, updated=Timestamp(wall + 1, 0), author=author))
    if shape < 0.15:
        return to_record(
            tombstone(item, updated=Timestamp(wall + 1, 0), author=author, moved_to="L1")
        )
    text = to_record(item)
    if shape < 0.45:
        return corrupt(rng, text)
    return text


def corrupt(rng: random.Random, record: str) -> str:
    """`record` changed in one way; most changes make it corrupt, some keep it valid."""
    raw: dict[str, Any] = json.loads(record)
    how = rng.randrange(13)
    if how == 0:
        raw.pop(rng.choice(sorted(raw)))
    elif how == 1:
        raw[rng.choice(["zz", "deleted", "codec", "moved_to"])] = rng.choice([1, "x", None, True])
    elif how == 2:
        raw[rng.choice(sorted(raw))] = rng.choice([1, "x", None, [], {}, 1.5, True])
    elif how == 3:
        cut = rng.randrange(len(record) + 1)
        return record[:cut] + rng.choice(["", "}", ",", "x", "\\", '"', "\x01"]) + record[cut:]
    elif how == 4:
        return rng.choice([" ", "", "\n"]) + record + rng.choice([" ", ""])
    elif how == 5 and "embedding" in raw:
        text = raw["embedding"]
        raw["embedding"] = rng.choice([text[:-1], text + "=", "!" + text[1:], "é", text + "AAAA"])
    elif how == 6 and raw.get("codec") in ("f32", "f16"):
        width = 4 if raw["codec"] == "f32" else 2
        data = bytearray(base64.b64decode(raw["embedding"]))
        data[:width] = np.array([np.inf], "<f4" if width == 4 else "<f2").tobytes()
        raw["embedding"] = base64.b64encode(bytes(data)).decode()
    elif how == 7 and "dim" in raw:
        raw["dim"] = rng.choice([0, -1, raw["dim"] + 1, True, 5000, 1.0, 10000])
    elif how == 8:
        raw[rng.choice(["created", "updated"])] = rng.choice(
            ["1.2", "000000000000001.00000a", "\u0660" * 15 + ".000000", 5]
        )
    elif how == 9:
        raw["confidence"] = rng.choice([1.5, -0.0, -1, True, 2**70, 1e-300, 0.0])
    elif how == 10:
        return record.replace('"confidence":', '"confidence": ', 1)
    elif how == 11:
        return "[" + record + "]"
    elif how == 12:  # a raw control character inside a string: not JSON
        field = rng.choice(['"content":"', '"author":"', '"content_hash":"'])
        return record.replace(field, field + rng.choice(["\x01", "\x1f", "\x7f"]), 1)
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_raw(sender: TieredMemory, tier: str, writes: list[tuple[str, str, str]]) -> None:
    """Put raw records into a sender's tier document, past every check."""
    sender.tier_doc(tier).write(writes)


def observe(m: TieredMemory) -> object:
    rng = np.random.default_rng(3)
    queries = [rng.standard_normal(dim).astype(np.float32) for dim in (1, 3, 8, 16)]
    return (
        [(i.to_json(), i.codec) for i in m.items()],
        {t: sorted(m.tier_doc(t).item_ids()) for t in TIERS},
        [m.digest(t).root() for t in TIERS],
        m.conflicted_ids(),
        {t: sorted(v) for t, v in m._tombstoned.items()},
        sorted(m._indexed_tier.items()),
        {i: sorted(t) for i, t in m._where.items()},
        dict(m._home),
        [[(h.tier, h.item_id, h.score) for h in m.search(q, k=200)] for q in queries],
        m.stats,
        m.clock.last,
    )


def event_rows(change: Change) -> list[object]:
    return [
        (e.seq, e.hlc, e.wall_ms, e.tier, e.item_id, e.kind, e.origin, e.author, e.detail)
        for e in change.events
    ]


def run_sync(senders: list[TieredMemory], receiver: TieredMemory, slice_bytes: int) -> object:
    seen: list[object] = []
    for sender in senders:
        for tier in TIERS:
            diff = sender.tier_doc(tier).encode_diff(receiver.tier_doc(tier).state_vector())
            plan = plan_slices(diff, slice_bytes)
            for index in range(len(plan)):
                change = receiver.apply_remote(tier, plan.slice(index), 2_000_000)
                seen.append((event_rows(change), change.updates, change.ceiling_ms))
    return seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.sampled_from([400, 3_000, 1 << 20]))
def test_bulk_apply_equals_the_general_path(seed: int, slice_bytes: int) -> None:
    rng = random.Random(seed)
    a, b = memory("node-a", 100), memory("node-b", 200)
    ids = [f"i{n:03d}" for n in range(rng.randrange(5, 60))]
    with pytest.MonkeyPatch.context() as patch:
        bulk, plain = memory("r", 300), general(memory("r", 300), patch)
        for round_ in range(2):
            for sender in (a, b):
                for tier in TIERS:
                    chosen = rng.sample(ids, rng.randrange(0, len(ids) // 2 + 1))
                    writes = [
                        (i, sender.node_id, record_for(rng, i, sender.node_id)) for i in chosen
                    ]
                    write_raw(sender, tier, writes)
            # Round 0: the receivers get part of it; round 1: the rest, over what they hold.
            senders = [a] if round_ == 0 else [b, a]
            synced = [run_sync(senders, m, slice_bytes) for m in (bulk, plain)]
            assert synced[0] == synced[1]
            assert observe(bulk) == observe(plain)


def test_bulk_path_takes_the_common_records(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = memory("node-a", 100)
    rows = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    writes = []
    for n in range(40):
        codec = list(EmbeddingCodec)[n % 3]
        item = build_item(
            item_id=f"i{n:02d}", tier="L3", content=f"c{n}", embedding=rows[n] if n % 4 else None,
            metadata={"k": n} if n % 5 == 0 else None, tags=("t",) if n % 7 == 0 else (),
            citations=(), confidence=0.5, created=Timestamp(5, n), updated=Timestamp(5, n),
            author="node-a", codec=codec, limits=Limits(),
        )  # fmt: skip
        writes.append((item.id, "node-a", to_record(item)))
    write_raw(sender, "L3", writes)
    taken: list[int] = []
    bulk = memory("r", 300)
    original = bulk._take_new_live

    def counted(*args: Any) -> _NewLive:
        result = original(*args)
        taken.append(len(result.positions))
        return result

    monkeypatch.setattr(bulk, "_take_new_live", counted)
    plain = general(memory("r", 300), monkeypatch)
    assert run_sync([sender], bulk, 1 << 20) == run_sync([sender], plain, 1 << 20)
    assert observe(bulk) == observe(plain)
    assert sum(taken) == 40


def test_the_scan_reads_the_common_shape_without_json() -> None:
    """The fast pattern (not the JSON fallback) accepts what `live_record_text` writes."""
    item = build_item(
        item_id="x", tier="L3", content="benchmark memory item", embedding=np.ones(8, np.float32),
        metadata=None, tags=(), citations=(), confidence=1.0, created=Timestamp(7, 1),
        updated=Timestamp(9, 2), author="node-a", codec=EmbeddingCodec.I8, limits=Limits(),
    )  # fmt: skip
    text = base64.b64encode(
        np.concatenate([np.array([1 / 127], "<f4").view(np.uint8), np.full(8, 127, np.uint8)])
    ).decode()
    record = live_record_text(item, "{}", text)
    assert record == to_record(item)
    scan = scan_live_records([record, record.replace('"tags":[]', '"tags":["t"]')])
    assert scan.positions == [0, 1]
    assert scan.updated == [Timestamp(9, 2).encode()] * 2
    assert scan.authors == ["node-a"] * 2
    ((indices, matrix),) = scan.vectors
    assert indices == [0, 1]
    assert matrix.tobytes() == np.vstack([item.embedding, item.embedding]).tobytes()
