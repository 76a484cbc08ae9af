"""Mesh.put_batches: pipelined bulk loads commit in order and lose no acknowledged batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdt.errors import InvalidItemError
from crdt.memory import NewItem
from mesh.api import Mesh


def batch(start: int, count: int) -> list[NewItem]:
    return [NewItem("L1", f"item {i}", f"bulk-{i}") for i in range(start, start + count)]


@pytest.mark.parametrize("in_flight", [1, 2, 4])
async def test_every_batch_is_stored_and_reported_in_order(tmp_path: Path, in_flight: int) -> None:
    reported: list[int] = []
    async with Mesh.open(tmp_path / "n") as mesh:
        stored = await mesh.put_batches(
            (batch(i * 50, 50) for i in range(7)), in_flight=in_flight, on_committed=reported.append
        )
    assert stored == 350
    assert reported == [50 * k for k in range(1, 8)]
    async with Mesh.open(tmp_path / "n") as reopened:
        assert reopened.memory.count("L1") == 350
        assert (await reopened.get("bulk-349")).content == "item 349"


async def test_a_bad_batch_raises_and_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    reported: list[int] = []
    bad = [*batch(100, 5), NewItem("L1", "", "bulk-bad", confidence=7.0)]
    batches = [batch(0, 50), batch(50, 50), bad, batch(200, 50)]
    async with Mesh.open(tmp_path / "n") as mesh:
        with pytest.raises(InvalidItemError):
            await mesh.put_batches(iter(batches), in_flight=2, on_committed=reported.append)
    assert reported == [50, 100]
    async with Mesh.open(tmp_path / "n") as reopened:
        assert (await reopened.get("bulk-99")).content == "item 99"
        assert "bulk-100" not in reopened.memory  # the bad batch wrote nothing


async def test_in_flight_must_be_positive(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path / "n") as mesh:
        with pytest.raises(ValueError, match="in_flight"):
            await mesh.put_batches([batch(0, 1)], in_flight=0)
