"""The WAL is checkpointed while the store is idle, not inside a writer's commit."""

from __future__ import annotations

from pathlib import Path

from crdt.memory import NewItem
from mesh.api import Mesh
from mesh.store import DB_FILENAME, IDLE_CHECKPOINT_BYTES, SqliteStore


def test_checkpoint_waits_for_enough_bytes(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path) as store:
        store.commit(updates=[("L1", b"x" * 1_000)])
        assert 0 < store.bytes_since_checkpoint < IDLE_CHECKPOINT_BYTES
        assert store.checkpoint_if_due() is False
        store.commit(updates=[("L1", b"y" * IDLE_CHECKPOINT_BYTES)])
        assert store.checkpoint_if_due() is True
        assert store.bytes_since_checkpoint == 0
        assert (tmp_path / DB_FILENAME).stat().st_size > IDLE_CHECKPOINT_BYTES


async def test_the_committer_checkpoints_once_idle_and_content_survives(tmp_path: Path) -> None:
    big = "z" * 60_000
    async with Mesh.open(tmp_path) as mesh:
        committer = mesh._running()
        for i in range(IDLE_CHECKPOINT_BYTES // len(big) + 2):
            await mesh.put_many([NewItem("L1", f"{big} {i}", f"big-{i}")])
        # `run` queues behind the idle checkpoint the last commit scheduled.
        pending = await committer.run(lambda store: store.bytes_since_checkpoint)
        assert pending < IDLE_CHECKPOINT_BYTES
        assert (tmp_path / DB_FILENAME).stat().st_size > IDLE_CHECKPOINT_BYTES
    async with Mesh.open(tmp_path) as mesh:
        assert mesh.memory.count("L1") == IDLE_CHECKPOINT_BYTES // len(big) + 2
