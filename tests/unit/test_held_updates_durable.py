"""Updates held back for a missing predecessor are persisted once it arrives."""

from __future__ import annotations

from pathlib import Path

from crdt.memory import NewItem, TieredMemory
from mesh.api import Mesh, wall_ms


def two_updates() -> tuple[bytes, bytes]:
    writer = TieredMemory(node_id="w", client_ids={"L1": 501, "L2": 502, "L3": 503})
    (first,) = writer.put(NewItem("L1", "first", "x"), 1_000).updates
    (second,) = writer.put(NewItem("L1", "second", "y"), 1_001).updates
    return first[1], second[1]


async def test_an_update_released_from_hold_survives_a_reopen(tmp_path: Path) -> None:
    first, second = two_updates()
    async with Mesh.open(tmp_path) as mesh:
        assert await mesh.apply_update("L1", second) == 0  # held: its predecessor is missing
        assert await mesh.apply_update("L1", first) == 2  # closes the gap, releases `second`
    async with Mesh.open(tmp_path) as reopened:
        assert (await reopened.get("x")).content == "first"
        assert (await reopened.get("y")).content == "second"
        assert reopened.memory.tier_doc("L1").held_updates == 0


async def test_an_update_seen_before_is_not_stored_again(tmp_path: Path) -> None:
    first, _second = two_updates()
    async with Mesh.open(tmp_path) as mesh:
        await mesh.apply_update("L1", first)
        rows = await mesh._running().run(lambda store: store.last_update_id("L1"))
        assert await mesh.apply_update("L1", first) == 0
        assert await mesh._running().run(lambda store: store.last_update_id("L1")) == rows


def put_delete_collect() -> tuple[TieredMemory, bytes, bytes, bytes]:
    """Return a writer and its updates for item x: put, delete, tombstone collection."""
    writer = TieredMemory(node_id="w", client_ids={"L1": 501, "L2": 502, "L3": 503})
    now = wall_ms()
    ((_t, put),) = writer.put(NewItem("L1", "soon gone", "x"), now).updates
    ((_t, dead),) = writer.delete("x", now + 1).updates
    retention = writer.config.policy("L1").tombstone_retention_ms
    ((_t, collected),) = writer.collect_tombstones(now + retention + 10).updates
    return writer, put, dead, collected


async def test_an_update_that_only_deletes_survives_a_reopen(tmp_path: Path) -> None:
    # A peer's tombstone collection deletes versions and adds none: the state vector stays.
    writer, put, dead, collected = put_delete_collect()
    async with Mesh.open(tmp_path) as mesh:
        await mesh.apply_update("L1", put)
        await mesh.apply_update("L1", dead)
        assert "x" in mesh.memory.tier_doc("L1")  # the tombstone, kept for its retention
        await mesh.apply_update("L1", collected)
        assert "x" not in mesh.memory.tier_doc("L1")
    async with Mesh.open(tmp_path) as reopened:  # too young to be collected here at open
        assert "x" not in reopened.memory.tier_doc("L1")
        assert reopened.memory.digest("L1").root() == writer.digest("L1").root()


async def test_a_deletion_that_arrives_before_its_items_survives_a_reopen(
    tmp_path: Path,
) -> None:
    # yrs keeps a delete set for items it has not seen pending, and applies it when they
    # arrive: the update carrying it changed nothing visible yet, but must be stored.
    writer, put, dead, collected = put_delete_collect()
    async with Mesh.open(tmp_path) as mesh:
        await mesh.apply_update("L1", collected)  # the deletion first
        await mesh.apply_update("L1", put)
        await mesh.apply_update("L1", dead)
        assert "x" not in mesh.memory.tier_doc("L1")
    async with Mesh.open(tmp_path) as reopened:
        assert "x" not in reopened.memory.tier_doc("L1")
        assert reopened.memory.digest("L1").root() == writer.digest("L1").root()
