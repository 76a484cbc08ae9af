"""TierDoc: multi-value registers in a flat Yjs map, and causal application of updates."""

from __future__ import annotations

import itertools

import pytest
from pycrdt import Doc, Map, merge_updates

from crdt.tier import CorruptUpdateError, TierDoc, split_key, version_key
from crdt.yslice import check_update
from crdt.ywire import WireFormatError, decode_state_vector, read_var_uint


def test_concurrent_writes_by_two_writers_both_survive() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    base = a.write([("x", "A", "v0")])
    assert base is not None
    b.apply_update(base)
    ua = a.write([("x", "A", "a1")])
    ub = b.write([("x", "B", "b1")])
    assert ua is not None and ub is not None
    assert a.apply_update(ub) == {"x"}
    assert b.apply_update(ua) == {"x"}
    assert dict(a.versions("x")) == dict(b.versions("x")) == {"A": "a1", "B": "b1"}
    assert a.content_hash("x") == b.content_hash("x")


def test_a_write_collapses_every_version_it_has_seen() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    ub = b.write([("x", "B", "b1")])
    assert ub is not None
    a.apply_update(ub)
    ua = a.write([("x", "A", "a2")])
    assert ua is not None
    b.apply_update(ua)
    assert dict(b.versions("x")) == {"A": "a2"}


def _single_client_updates() -> tuple[list[bytes], dict[str, str]]:
    doc: Doc = Doc(client_id=9)
    items: Map = doc.get("items", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(3):
        with doc.transaction():
            items[version_key("a", "n")] = f"v{i}"
    with doc.transaction():
        items[version_key("b", "n")] = "b"
    return updates, {k: str(v) for k, v in items.items()}


def test_updates_in_any_order_converge() -> None:
    """pycrdt alone loses `a` for 14 of these 24 orders; the hold-back must not."""
    updates, expected = _single_client_updates()
    for order in itertools.permutations(range(len(updates))):
        doc = TierDoc("L1", client_id=2)
        for i in order:
            doc.apply_update(updates[i])
        assert doc.held_updates == 0
        assert not doc.needs_sync
        assert {version_key(k, w): r for k in ("a", "b") for w, r in doc.versions(k).items()} == (
            expected
        )


def test_update_with_a_gap_is_held_until_the_gap_closes() -> None:
    updates, _ = _single_client_updates()
    doc = TierDoc("L1", client_id=2)
    assert doc.apply_update(updates[2]) == set()
    assert doc.held_updates == 1 and doc.needs_sync
    doc.apply_update(updates[0])
    assert doc.held_updates == 1
    assert doc.apply_update(updates[1]) == {"a"}
    assert doc.held_updates == 0 and not doc.needs_sync
    assert doc.versions("a") == {"n": "v2"}


def test_a_merged_update_of_two_writers_is_held_while_either_has_a_gap() -> None:
    a, x, b = (TierDoc("L1", client_id=c) for c in (1, 2, 3))
    first = a.write([("k", "A", "v0")])
    assert first is not None and b.apply_update(first) == {"k"}
    lost_overwrite = a.write([("k", "A", "v1")])  # neither of these two reaches b
    lost_import = x.write([("x1", "X", "one")])
    later_import = x.write([("x2", "X", "two")])
    final = a.write([("k", "A", "final")])
    assert None not in (lost_overwrite, lost_import, later_import, final)
    merged = merge_updates(later_import, final)  # one outbox batch from two writers
    # Before: yrs applied the overwrite and kept the new value pending: k vanished here.
    assert b.apply_update(merged) == set()
    assert b.held_updates == 1 and b.needs_sync
    assert b.versions("k") == {"A": "v0"}
    assert b.apply_update(lost_overwrite) == {"k"}  # a's gap closes, x's is still open
    assert b.held_updates == 1
    assert b.apply_update(lost_import) >= {"x1", "x2", "k"}  # both closed: released
    assert b.held_updates == 0 and not b.needs_sync
    assert b.versions("k") == {"A": "final"}
    assert b.versions("x2") == {"X": "two"}


def test_a_merged_update_with_a_gap_inside_one_writers_run_is_held() -> None:
    """Found in review: only the first clock of each writer was checked, so a batch merging
    a writer's first and third updates (the second missing) was applied part-way, and its
    version index no longer matched the document after a later delete."""
    x, b = TierDoc("L1", client_id=7), TierDoc("L1", client_id=9)
    u1 = x.write([("a", "x", "v1")])
    u2 = x.write([("b", "x", "w1")])
    u3 = x.write([("a", "x", "v2")])
    u4 = x.write([("a", "x", None)])
    assert None not in (u1, u2, u3, u4)
    batch = merge_updates(u1, u3)
    assert check_update(batch).starts == {7: 2}  # the run after the gap starts at 2
    assert b.apply_update(batch) == set() and b.held_updates == 1 and b.needs_sync
    b.apply_update(u4)  # deletes what the held batch holds: yrs keeps it pending
    b.apply_update(x.encode_diff(b.state_vector()))  # the repair a sync answer brings
    assert b.held_updates == 0
    assert b.versions("a") == {} and b.versions("b") == {"x": "w1"}
    assert dict(b._map.items()) == dict(x._map.items())


def test_a_sync_answer_whose_deletions_are_all_known_here_is_not_kept() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    for update in (a.write([(f"k{i}", "A", "v") for i in range(10)]), a.remove_all(["k3", "k5"])):
        assert update is not None and b.apply_update(update)
    assert b.integrated  # the deletion changed keys here: kept
    answer = a.encode_diff(b.state_vector())  # nothing new but a's whole delete set
    assert b.apply_update(answer) == set()
    assert b.integrated == []  # before: kept (and persisted) at every sync answer


def test_a_deletion_of_items_not_seen_yet_is_kept() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    first = a.write([("k", "A", "v")])
    deletion = a.remove_all(["k"])
    assert first is not None and deletion is not None
    assert b.apply_update(deletion) == set()  # yrs keeps it pending: k is not here yet
    assert b.integrated == [deletion]  # kept, so a restart still knows it
    assert b.apply_update(first) == set() and b.versions("k") == {}


def test_dropped_gaps_are_forgotten_once_a_sync_answer_applied() -> None:
    updates, _ = _single_client_updates()
    doc = TierDoc("L1", client_id=2)
    doc.apply_update(updates[2])
    doc._held.clear()  # as if the bound dropped it
    doc.gaps_dropped = 1
    assert doc.needs_sync
    doc.answer_applied()
    assert not doc.needs_sync


@pytest.mark.parametrize("garbage", [b"", b"\xff", b"\x01\x01", b"\x05\x00garbage"])
def test_garbage_update_is_rejected_and_changes_nothing(garbage: bytes) -> None:
    doc = TierDoc("L1", client_id=2)
    doc.write([("x", "A", "v")])
    before = doc.encode_diff()
    with pytest.raises(CorruptUpdateError):
        doc.apply_update(garbage)
    assert doc.encode_diff() == before


def test_a_write_returns_its_own_update_only_after_remote_applies() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    remote = b.write([("x", "B", "b1"), ("y", "B", "y1")])
    assert remote is not None
    assert a.apply_update(remote) == {"x", "y"}
    own = a.write([("z", "A", "z1")])
    assert own is not None
    fresh = TierDoc("L1", client_id=3)
    assert fresh.apply_update(own) == {"z"}
    assert {i: dict(fresh.versions(i)) for i in fresh.item_ids()} == {"z": {"A": "z1"}}


def test_remote_deletes_and_non_string_values_leave_no_version() -> None:
    doc: Doc = Doc(client_id=9)
    items: Map = doc.get("items", type=Map)
    with doc.transaction():
        items[version_key("a", "n")] = "v"
        items[version_key("b", "n")] = "w"
    first = doc.get_update()
    tier = TierDoc("L1", client_id=2)
    assert tier.apply_update(first) == {"a", "b"}
    state = doc.get_state()
    with doc.transaction():
        del items[version_key("a", "n")]
        items[version_key("b", "n")] = Map({"nested": "value"})
    assert tier.apply_update(doc.get_update(state)) == {"a", "b"}
    assert not tier.versions("a") and not tier.versions("b")
    assert list(tier.item_ids()) == []


def test_keys_split_only_when_well_formed() -> None:
    assert split_key("item-1/node") == ("item-1", "node")
    assert split_key("no-separator") is None
    assert split_key("/node") is None
    assert split_key("item/") is None


def test_ywire_reads_varints_and_state_vectors() -> None:
    assert read_var_uint(bytes([0x96, 0x01]), 0) == (150, 2)
    with pytest.raises(WireFormatError):
        read_var_uint(b"\x80", 0)
    doc = TierDoc("L1", client_id=300)
    update = doc.write([("x", "A", "v")])
    assert update is not None
    assert check_update(update).starts == {300: 0}
    assert decode_state_vector(doc.state_vector()) == {300: 1}


def test_a_snapshot_keeps_deletions_of_items_not_seen_yet() -> None:
    """Found in review: encode_diff leaves out deletions yrs keeps pending, so a compaction
    storing it lost them, and the items came back when they arrived after a restart."""
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    first = a.write([("x", "A", "v")])
    deletion = a.remove_all(["x"])
    assert first is not None and deletion is not None
    b.apply_update(deletion)  # pending: x is not here yet
    restored = TierDoc("L1", client_id=3)
    restored.apply_update(b.snapshot())  # what a compaction stores instead of the rows
    restored.apply_update(first)
    assert restored.versions("x") == {}
    b.apply_update(first)  # the deletion takes effect: nothing pending any more
    assert b.versions("x") == {} and b.snapshot() == b.encode_diff()


def test_an_update_that_deletes_what_it_brings_leaves_nothing_pending() -> None:
    """Found in review: pending deletions were judged against the state vector before the
    apply, so every sync answer (which deletes what it overwrites) was kept whole."""
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    for round_ in range(3):
        a.write([(f"k{i}", "A", f"v{round_}") for i in range(50)])  # overwrites: deletions
    b.apply_update(a.encode_diff())
    assert b._pending_deletes == []
    assert b.snapshot() == b.encode_diff()
