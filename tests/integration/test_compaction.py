"""Compaction folds every tier's update log into one snapshot without changing anything.

The node's resolved items, every stored version (tombstones and conflicts included) and
the Merkle roots must be identical before and after `compact()`, after reopening from the
snapshot, and writes made after compaction must persist on top of it.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from crdt.memory import NewItem
from mesh.api import Mesh
from mesh.store import DB_FILENAME, SqliteStore

TIERS = ("L1", "L2", "L3")
N_ITEMS = 3_000
DIM = 12


def _embedding(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def _request(i: int, tier: str, *, rev: int = 0) -> NewItem:
    return NewItem(
        tier=tier,
        content=f"item {i} rev {rev}",
        id=f"item-{i}",
        embedding=_embedding(i) if i % 4 == 0 else None,
        metadata={"i": i, "rev": rev, "tag": ["a", "b"][i % 2]},
        tags=(f"t{i % 5}",),
        confidence=0.5 + (i % 5) / 10,
    )


def _state(mesh: Mesh, ids: set[str]) -> dict[str, Any]:
    """Return everything observable about the node's memory, as plain comparable data."""
    memory = mesh.memory
    return {
        "items": {item.id: item.to_json() for item in memory.items()},
        "versions": {i: [v.to_json() for v in memory.versions(i)] for i in sorted(ids)},
        "roots": {t: memory.digest(t).root() for t in TIERS},
        "counts": {t: memory.count(t) for t in TIERS},
        "conflicts": memory.conflicted_ids(),
    }


def _tier_stats(data_dir: Path) -> dict[str, Any]:
    """Read the store's tier stats through a second connection, even while a Mesh has it."""
    conn = sqlite3.connect((data_dir / DB_FILENAME).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return SqliteStore(data_dir / DB_FILENAME, conn).tier_stats()
    finally:
        conn.close()


async def _populate(mesh: Mesh, peer: Mesh, rng: random.Random) -> set[str]:
    """Write items, edits, deletes, moves and remote conflicts; return every id used."""
    tier_of = {i: TIERS[i % 3] for i in range(N_ITEMS)}
    for lo in range(0, N_ITEMS, 250):
        await mesh.put_many([_request(i, tier_of[i]) for i in range(lo, min(lo + 250, N_ITEMS))])
    # Metadata/content edits: some as single concurrent puts (group committed), some batched.
    edited = rng.sample(range(N_ITEMS), 600)
    await asyncio.gather(
        *(
            mesh.put(
                tier_of[i],
                f"item {i} rev 1",
                id=f"item-{i}",
                metadata={"i": i, "rev": 1, "edited": True},
            )
            for i in edited[:300]
        )
    )
    await mesh.put_many([_request(i, tier_of[i], rev=2) for i in edited[300:]])
    # Deletes and moves, as many concurrent calls sharing commits.
    rest = [i for i in range(N_ITEMS) if i not in set(edited)]
    rng.shuffle(rest)
    deleted, moved = rest[:400], rest[400:800]
    await asyncio.gather(*(mesh.delete(f"item-{i}") for i in deleted))
    for i in moved:
        tier_of[i] = rng.choice([t for t in TIERS if t != tier_of[i]])
    await asyncio.gather(*(mesh.move(f"item-{i}", tier_of[i]) for i in moved))
    # A put after a delete resurrects the item.
    for i in deleted[:20]:
        await mesh.put(tier_of[i], f"item {i} reborn", id=f"item-{i}")
    # Concurrent edits on another node, merged in: conflicts and remote versions.
    for i in range(N_ITEMS, N_ITEMS + 50):
        tier_of[i] = "L1"
    await mesh.put_many([_request(i, "L1") for i in range(N_ITEMS, N_ITEMS + 50)])
    await peer.apply_update("L1", await mesh.export_tier("L1"))
    await peer.put_many([_request(i, "L1", rev=9) for i in range(N_ITEMS, N_ITEMS + 50)])
    await mesh.put_many([_request(i, "L1", rev=8) for i in range(N_ITEMS, N_ITEMS + 25)])
    await mesh.apply_update("L1", await peer.export_tier("L1"))
    return {f"item-{i}" for i in range(N_ITEMS + 50)}


async def test_compaction_preserves_everything_across_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    rng = random.Random(7)
    async with Mesh.open(data_dir) as mesh, Mesh.open(tmp_path / "peer") as peer:
        ids = await _populate(mesh, peer, rng)
        before = _state(mesh, ids)
        status_before = mesh.status()
        rows_before = _tier_stats(data_dir)  # a second connection; all writes are committed

        # The workload really produced every kind of state.
        assert len(before["items"]) == N_ITEMS + 50 - 400 + 20
        assert before["conflicts"], "the merged peer edits should leave conflicts"
        assert any(
            v["deleted"] and not v["moved_to"] for vs in before["versions"].values() for v in vs
        )
        assert any(v["moved_to"] for vs in before["versions"].values() for v in vs)
        assert all(rows_before[t].rows > 1 for t in TIERS)

        removed = await mesh.compact()
        assert removed == {t: rows_before[t].rows for t in TIERS}
        assert _state(mesh, ids) == before
        assert mesh.status()["tiers"] == status_before["tiers"]
        assert await mesh.integrity_check() == "ok"

    stats = _tier_stats(data_dir)
    assert {t: stats[t].rows for t in TIERS} == dict.fromkeys(TIERS, 0)
    assert all(stats[t].snapshot_bytes > 0 for t in TIERS)

    async with Mesh.open(data_dir) as mesh:
        assert _state(mesh, ids) == before
        # Writes on top of the snapshot.
        await mesh.put("L2", "written after compaction", id="after-1", metadata={"x": 1})
        await mesh.put_many([NewItem("L3", f"late {j}", f"after-{j}") for j in range(2, 12)])
        victim = sorted(before["items"])[0]
        await mesh.delete(victim)
        await mesh.move("after-2", "L1")
        after = _state(mesh, ids | {f"after-{j}" for j in range(1, 12)})

    stats = _tier_stats(data_dir)
    assert all(stats[t].rows >= 1 for t in TIERS)  # new rows, kept after the snapshot
    async with Mesh.open(data_dir) as mesh:
        assert _state(mesh, ids | {f"after-{j}" for j in range(1, 12)}) == after
        assert (await mesh.get("after-1")).content == "written after compaction"
        assert (await mesh.get("after-2")).tier == "L1"
        assert victim not in mesh.memory
        # Compacting again folds the new rows too, and changes nothing.
        await mesh.compact()
        assert _state(mesh, ids | {f"after-{j}" for j in range(1, 12)}) == after


async def test_compaction_interleaved_with_concurrent_writes_loses_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "node"
    async with Mesh.open(data_dir) as mesh:
        await mesh.put_many([_request(i, TIERS[i % 3]) for i in range(600)])
        acked: dict[str, str] = {}
        deleted: set[str] = set()

        async def writer(w: int) -> None:
            tier = TIERS[w % 3]
            for j in range(120):
                item_id = f"c{w}-{j}"
                if j % 10 == 9:
                    batch = [NewItem(tier, f"b{w}-{j}-{k}", f"{item_id}-{k}") for k in range(5)]
                    for item in await mesh.put_many(batch):
                        acked[item.id] = item.content
                else:
                    item = await mesh.put(tier, f"w{w} j{j}", id=item_id, embedding=_embedding(j))
                    acked[item.id] = item.content
                if j % 7 == 6:
                    victim = f"item-{w * 150 + j}"
                    await mesh.delete(victim)
                    deleted.add(victim)

        async def compactor() -> int:
            folded = 0
            for _ in range(15):
                folded += sum((await mesh.compact()).values())
            return folded

        results = await asyncio.gather(*(writer(w) for w in range(4)), compactor())
        assert results[-1] > 0  # compaction really ran while rows were being added
        all_ids = set(acked) | deleted | {f"item-{i}" for i in range(600)}
        before = _state(mesh, all_ids)
        assert len(acked) == 4 * (108 + 12 * 5)

    async with Mesh.open(data_dir) as mesh:
        assert _state(mesh, all_ids) == before
        for item_id, content in acked.items():
            assert (await mesh.get(item_id)).content == content
        for item_id in deleted:
            assert item_id not in mesh.memory
        assert await mesh.integrity_check() == "ok"
