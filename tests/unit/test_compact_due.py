"""A running node folds long update logs into snapshots, without rewriting a big snapshot
for a few rows: `Mesh.compact_due` and the daemon's periodic call of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mesh.api import COMPACT_AFTER_ROWS, Mesh
from mesh.daemon import Daemon, DaemonOptions
from mesh.store import TierStoreStats

ROWS = COMPACT_AFTER_ROWS + 1


async def l1_stats(mesh: Mesh) -> TierStoreStats:
    stats = await mesh._running().run(lambda store: store.tier_stats())
    return stats["L1"]


async def put_one_row_each(mesh: Mesh, prefix: str, content: str) -> None:
    """Write ROWS items to L1 as ROWS separate changes (one update row each)."""
    await asyncio.gather(
        *(mesh.put("L1", content=f"{content} {i}", id=f"{prefix}-{i}") for i in range(ROWS))
    )


async def test_a_long_log_is_compacted_and_content_survives_reopen(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path) as mesh:
        await put_one_row_each(mesh, "a", "small")
        assert (await l1_stats(mesh)).rows == ROWS
        assert await mesh.compact_due() == {"L1": ROWS}
        after = await l1_stats(mesh)
        assert after.rows == 0 and after.snapshot_bytes > 0
        digest = mesh.memory.digest("L1").root()
    async with Mesh.open(tmp_path) as mesh:
        assert mesh.memory.count("L1") == ROWS
        assert mesh.memory.digest("L1").root() == digest


async def test_a_log_much_smaller_than_its_snapshot_waits(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path) as mesh:
        await put_one_row_each(mesh, "big", "x" * 4_000)
        assert await mesh.compact_due() == {"L1": ROWS}
        await put_one_row_each(mesh, "small", "y")  # many rows, few bytes
        stats = await l1_stats(mesh)
        assert stats.rows == ROWS and 2 * stats.update_bytes < stats.snapshot_bytes
        assert await mesh.compact_due() == {}
        assert (await l1_stats(mesh)).rows == ROWS
        assert await mesh.compact() == {"L1": ROWS}  # an explicit compaction still runs


async def test_the_daemon_compacts_periodically_until_stopped(tmp_path: Path) -> None:
    daemon = Daemon(DaemonOptions(tmp_path, compact_every_s=0.05))
    async with Mesh.open(tmp_path) as mesh:
        await put_one_row_each(mesh, "a", "small")
        task = asyncio.create_task(daemon.compact_periodically(mesh))
        for _ in range(200):
            if (await l1_stats(mesh)).rows == 0:
                break
            await asyncio.sleep(0.05)
        assert (await l1_stats(mesh)).rows == 0
        daemon.stop()
        await asyncio.wait_for(task, timeout=5)


async def test_periodic_compaction_can_be_turned_off(tmp_path: Path) -> None:
    daemon = Daemon(DaemonOptions(tmp_path, compact_every_s=0))
    async with Mesh.open(tmp_path) as mesh:
        await put_one_row_each(mesh, "a", "small")
        await asyncio.wait_for(daemon.compact_periodically(mesh), timeout=5)  # returns at once
        assert (await l1_stats(mesh)).rows == ROWS
