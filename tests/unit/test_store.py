"""Behavioural tests for the durable SQLite store, against real database files."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from mesh.store import (
    APPLICATION_ID,
    DB_FILENAME,
    SCHEMA_VERSION,
    ForeignStoreError,
    SqliteStore,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreVersionError,
    TierState,
    TierStoreStats,
)


def recording_doc() -> tuple[Doc[Any], list[bytes]]:
    """Return a Doc and the list that collects every update it emits."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return doc, updates


def doc_content(doc: Doc[Any]) -> tuple[str, dict[str, object]]:
    """Return the text and map content used by the compaction tests."""
    return str(doc.get("notes", type=Text)), dict(doc.get("facts", type=Map))


def doc_from(state: TierState) -> Doc[Any]:
    """Rebuild a Doc from a stored tier state."""
    doc: Doc[Any] = Doc()
    if state.snapshot is not None:
        doc.apply_update(state.snapshot)
    for update in state.updates:
        doc.apply_update(update)
    return doc


def test_open_creates_private_dir_and_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "node"
    with SqliteStore.open(data_dir) as store:
        assert store.path == data_dir / DB_FILENAME
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((data_dir / DB_FILENAME).stat().st_mode) & 0o077 == 0


def test_pragmas_wal_and_identity(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        conn = store._conn  # test-only access to the connection
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.integrity_check() == "ok"


def test_commit_load_round_trip_survives_reopen(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"a"), ("L2", b"x"), ("L1", b"b")])
        store.commit(updates=[("L1", b"c")])
        store.commit()  # empty commit is a no-op
    with SqliteStore.open(tmp_path) as store:
        l1 = store.load_tier("L1")
        assert l1.snapshot is None
        assert l1.updates == [b"a", b"b", b"c"]
        assert store.load_tier("L2").updates == [b"x"]
        assert l1.last_id > store.load_tier("L2").last_id
        assert store.load_tier("L3") == TierState(snapshot=None, updates=[], last_id=0)
        assert store.integrity_check() == "ok"


def test_zero_length_file_is_initialised(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).touch()
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"u")])
        assert store.load_tier("L1").updates == [b"u"]


def test_compaction_with_real_crdt_docs(tmp_path: Path) -> None:
    doc, emitted = recording_doc()
    text, facts = doc.get("notes", type=Text), doc.get("facts", type=Map)
    with SqliteStore.open(tmp_path) as store:
        for i in range(20):
            text += f"line {i}\n"
            facts[f"k{i % 5}"] = i
        store.commit(updates=[("L2", u) for u in emitted])
        store.commit(updates=[("L1", b"other tier")])
        emitted.clear()

        loaded = store.load_tier("L2")
        rebuilt = doc_from(loaded)
        assert doc_content(rebuilt) == doc_content(doc)

        # Writes landing between load and compact must survive the compaction.
        text += "late write\n"
        facts["late"] = True
        store.commit(updates=[("L2", u) for u in emitted])
        late_rows = len(emitted)
        emitted.clear()

        deleted = store.compact("L2", rebuilt.get_update(), loaded.last_id)
        assert deleted == len(loaded.updates) == 40
        after = store.load_tier("L2")
        assert after.snapshot == rebuilt.get_update()
        assert len(after.updates) == late_rows
        assert doc_content(doc_from(after)) == doc_content(doc)
        assert store.load_tier("L1").updates == [b"other tier"]  # other tiers untouched

        stats = store.tier_stats()
        assert stats["L2"] == TierStoreStats(
            rows=late_rows,
            update_bytes=sum(len(u) for u in after.updates),
            snapshot_bytes=len(after.snapshot),
        )
        assert stats["L1"].rows == 1 and stats["L1"].snapshot_bytes == 0

        # A second compaction replaces the earlier snapshot entirely.
        full = doc_from(after)
        assert store.compact("L2", full.get_update(), after.last_id) == late_rows
        final = store.load_tier("L2")
        assert final.snapshot == full.get_update() and final.updates == []
        assert final.last_id == after.last_id
    with SqliteStore.open(tmp_path) as store:
        assert doc_content(doc_from(store.load_tier("L2"))) == doc_content(doc)


def test_ids_not_reused_after_compacting_newest_rows(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"1"), ("L1", b"2")])
        state = store.load_tier("L1")
        assert store.compact("L1", b"snap", state.last_id) == 2
        store.commit(updates=[("L1", b"3")])
        after = store.load_tier("L1")
        assert after.snapshot == b"snap" and after.updates == [b"3"]
        assert after.last_id > state.last_id


def test_compact_rejects_stale_or_future_upto(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"1"), ("L1", b"2")])
        last = store.load_tier("L1").last_id
        with pytest.raises(ValueError, match="beyond"):
            store.compact("L1", b"snap", last + 1)
        store.compact("L1", b"snap", last)
        with pytest.raises(ValueError, match="stale"):
            store.compact("L1", b"older", last - 1)
        assert store.load_tier("L1").snapshot == b"snap"


def test_meta_upsert_persists(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        assert store.get_meta("node_id") is None
        store.commit(meta={"node_id": "abc", "hlc": "1"})
        store.commit(meta={"hlc": "2"})
        assert store.get_meta("hlc") == "2"
    with SqliteStore.open(tmp_path) as store:
        assert store.get_meta("node_id") == "abc"
        assert store.get_meta("hlc") == "2"


@pytest.mark.parametrize("count", [199, 200, 201, 450])
def test_a_large_batch_of_events_is_stored_whole_and_a_later_row_wins(
    tmp_path: Path, count: int
) -> None:
    rows = [(seq, f'{{"n": {seq}}}') for seq in range(1, count + 1)]
    rows.insert(count // 2, (count, '{"n": "early"}'))  # replaced by the last row
    rows.append((3, '{"n": "late"}'))  # replaces the third
    with SqliteStore.open(tmp_path) as store:
        store.commit(events=rows)
        stored = store.events_since(0)
    expected = {seq: body for seq, body in rows}
    assert stored == sorted(expected.items())
    assert dict(stored)[3] == '{"n": "late"}' and dict(stored)[count] == f'{{"n": {count}}}'


def test_events_since_and_trim(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(events=[(seq, f'{{"n": {seq}}}') for seq in range(1, 11)])
        store.commit(events=[(5, '{"n": "five"}')])  # same seq replaces the body
        assert [s for s, _ in store.events_since(3)] == list(range(4, 11))
        assert store.events_since(3, limit=2) == [(4, '{"n": 4}'), (5, '{"n": "five"}')]
        assert store.events_since(10) == []
        assert store.trim_events(keep_last=3) == 7
        assert [s for s, _ in store.events_since(0)] == [8, 9, 10]
        assert store.trim_events(keep_last=5) == 0
        assert store.trim_events(keep_last=0) == 3
        assert store.events_since(0) == []


def test_bad_argument_writes_nothing(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        with pytest.raises(TypeError):
            store.commit(updates=[("L1", b"ok"), ("L1", "not bytes")])  # type: ignore[list-item]
        assert store.load_tier("L1").updates == []


def test_disk_full_raises_and_store_recovers(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"before")], events=[(1, "{}")], meta={"k": "v1"})
        conn = store._conn  # test-only: cap the database size to simulate a full disk
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = [("L1", os.urandom(8192)) for _ in range(64)]
        with pytest.raises(StoreFullError, match="disk is full") as info:
            store.commit(updates=big, events=[(2, "{}")], meta={"k": "v2"})
        assert str(store.path) in str(info.value)
        assert store.load_tier("L1").updates == [b"before"]
        assert store.events_since(0) == [(1, "{}")]
        assert store.get_meta("k") == "v1"

        conn.execute("PRAGMA max_page_count = 1073741823")
        store.commit(updates=[("L1", b"after")], meta={"k": "v3"})
        assert store.load_tier("L1").updates == [b"before", b"after"]
        assert store.integrity_check() == "ok"
    with SqliteStore.open(tmp_path) as store:
        assert store.load_tier("L1").updates == [b"before", b"after"]
        assert store.get_meta("k") == "v3"


def test_closed_store_raises(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.load_tier("L1")


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))


def _text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 50)


def _foreign_db(path: Path, app_id: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    conn.execute("INSERT INTO contacts VALUES ('ann', '555')")
    conn.commit()
    conn.close()


def _newer_version(path: Path) -> None:
    with SqliteStore.open(path.parent) as store:
        store.commit(updates=[("L1", b"data")])
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def _corrupt_pages(path: Path) -> None:
    with SqliteStore.open(path.parent) as store:
        for i in range(50):
            store.commit(updates=[("L1", os.urandom(2000))], events=[(i, "{}" * 100)])
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 6 * page
    raw[2 * page : 5 * page] = random.Random(3).randbytes(3 * page)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (_random_bytes, StoreCorruptError, "not a SQLite database"),
        (_text_file, StoreCorruptError, "not a SQLite database"),
        (lambda p: _foreign_db(p, 0), ForeignStoreError, "not a memmesh database"),
        (lambda p: _foreign_db(p, 0x1234), ForeignStoreError, "application_id=0x1234"),
        (_newer_version, StoreVersionError, "newer than supported"),
        (_corrupt_pages, StoreCorruptError, "corrupt|malformed|quick_check|unreadable"),
    ],
    ids=["random-bytes", "text-file", "foreign-db", "foreign-app-id", "newer-version", "pages"],
)
def test_unusable_file_is_refused_and_untouched(
    tmp_path: Path, make: Callable[[Path], None], error: type[StoreError], reason: str
) -> None:
    path = tmp_path / DB_FILENAME
    make(path)
    before = path.read_bytes()
    with pytest.raises(error, match=reason) as info:
        SqliteStore.open(tmp_path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)  # the CLI's contract: one line on stderr
    assert path.read_bytes() == before
    with pytest.raises(error):  # still refused on a second attempt
        SqliteStore.open(tmp_path)
    assert path.read_bytes() == before


async def test_one_process_at_a_time_per_data_directory(tmp_path: Path) -> None:
    from mesh.api import Mesh
    from mesh.store import StoreBusyError

    async with Mesh.open(tmp_path) as first:
        await first.put("L1", "kept", id="kept")
        with pytest.raises(StoreBusyError, match=str(tmp_path)):
            SqliteStore.open(tmp_path)
        with pytest.raises(StoreBusyError):
            async with Mesh.open(tmp_path):
                pass
        assert (await first.get("kept")).content == "kept"  # the first one is unaffected
    async with Mesh.open(tmp_path) as again:  # released on close
        assert (await again.get("kept")).content == "kept"


async def test_compaction_trims_the_event_log_to_the_ring_size(tmp_path: Path) -> None:
    import dataclasses

    from crdt.config import MemoryConfig
    from mesh.api import Mesh

    config = dataclasses.replace(MemoryConfig.default(), event_capacity=50)
    async with Mesh.open(tmp_path, config=config) as mesh:
        for i in range(120):
            await mesh.put("L1", f"item {i}", id=f"i{i}")
        assert await mesh._running().run(lambda s: len(s.events_since(0))) == 120
        await mesh.compact()
        kept = await mesh._running().run(lambda s: [seq for seq, _ in s.events_since(0)])
    assert kept == list(range(71, 121))
