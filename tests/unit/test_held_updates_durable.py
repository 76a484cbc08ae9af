"""Updates held back for a missing predecessor are persisted once it arrives."""

from __future__ import annotations

from pathlib import Path

from crdt.memory import NewItem, TieredMemory
from mesh.api import Mesh


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
