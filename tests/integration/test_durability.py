"""Acceptance test: every acknowledged write survives SIGKILL of the writing process.

A child process (`_writer_child.py`) writes items in a loop and prints each id right after
the write returned. The parent kills it with SIGKILL at a random moment, reopens the data
directory and checks that every acknowledged id is there with the right value, that the
SQLite file is sound, and that nothing seen in an earlier round was lost. The rounds reuse
one data directory, so each round also recovers from the previous crash.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import signal
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from crdt.item import MemoryItem
from mesh.api import Mesh

pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("_writer_child.py")
ROUNDS = 20
ROUND_SPAN = 1_000_000  # round r writes ids w{r * ROUND_SPAN + k}
SEED = 20240611
STARTUP_TIMEOUT_S = 60.0


def _load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_writer_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child()


async def _run_and_kill(data_dir: Path, start: int, seed: int, delay_s: float) -> list[str]:
    """Start a writer, SIGKILL it `delay_s` after its first ack; return the acked ids."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(data_dir),
        str(start),
        str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked: list[str] = []
    first_ack = asyncio.Event()

    async def read_acks() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if not line.endswith(b"\n"):
                break  # a torn last line was never fully reported: not counted
            acked.append(line.decode().strip())
            first_ack.set()
        first_ack.set()  # EOF: wake the waiter even if the child died early

    reader = asyncio.create_task(read_acks())
    try:
        await asyncio.wait_for(first_ack.wait(), STARTUP_TIMEOUT_S)
        if acked:
            # The crash moment: a random point while the child is busy writing.
            await asyncio.sleep(delay_s)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await reader
    stderr = (await proc.stderr.read()).decode(errors="replace")
    assert acked, f"writer child acknowledged nothing; stderr:\n{stderr}"
    assert proc.returncode == -signal.SIGKILL, (
        f"writer child ended by itself (status {proc.returncode}); stderr:\n{stderr}"
    )
    return acked


def _index(item_id: str) -> int:
    assert item_id.startswith("w"), item_id
    return int(item_id[1:])


def _check_item(items: dict[str, MemoryItem], item_id: str) -> None:
    i = _index(item_id)
    item = items.get(item_id)
    assert item is not None, f"{item_id} was acknowledged but is missing"
    assert item.tier == "L1"
    assert item.content == child.content_for(i)
    assert dict(item.metadata) == child.metadata_for(i)
    expected = child.embedding_for(i)
    if expected is None:
        assert item.embedding is None
    else:
        assert item.embedding is not None
        np.testing.assert_array_equal(item.embedding, expected)  # L1 stores f32 exactly


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    rng = random.Random(SEED)
    all_acked: list[str] = []
    seen_before: set[str] = set()  # every id observed present after an earlier crash
    total_acked_per_round: list[int] = []

    for round_no in range(ROUNDS):
        start = round_no * ROUND_SPAN
        delay = rng.uniform(0.05, 0.3)
        acked = await _run_and_kill(data_dir, start, rng.randrange(2**31), delay)
        indices = [_index(a) for a in acked]
        # The child acknowledges in id order, one write at a time.
        assert indices == list(range(start, start + len(acked)))
        all_acked.extend(acked)
        total_acked_per_round.append(len(acked))

        async with Mesh.open(data_dir) as mesh:
            assert await mesh.integrity_check() == "ok"
            items = {item.id: item for item in mesh.memory.items()}
            assert mesh.memory.conflicted_ids() == []
            # Every acknowledged id, of this round and of every earlier one, is intact.
            for item_id in all_acked:
                _check_item(items, item_id)
            # Nothing a reader saw after an earlier crash has disappeared.
            present = set(items)
            assert seen_before <= present, sorted(seen_before - present)[:10]
            # Writes are sequential, so this round's durable ids form a prefix: all acked
            # ids plus at most the one write (a batch) in flight at the kill, never a hole.
            this_round = sorted(i for i in map(_index, present) if start <= i < start + ROUND_SPAN)
            assert this_round == list(range(start, start + len(this_round)))
            assert len(acked) <= len(this_round) <= len(acked) + child.MAX_BATCH
            for extra in this_round[len(acked) :]:
                _check_item(items, f"w{extra}")  # an unacked write is whole, never torn
            assert mesh.memory.count("L1") == len(present)
            assert (await mesh.get(all_acked[-1])).content == child.content_for(
                _index(all_acked[-1])
            )
            seen_before = present

    # Rounds really overlapped the writes with kills at different points.
    assert len(all_acked) == sum(total_acked_per_round)
    assert len(set(total_acked_per_round)) > 1
