"""Searches scored off the event loop: a frozen snapshot, exact without concurrent changes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from crdt.memory import NewItem
from crdt.search import SearchPlan, VectorIndex
from mesh import api
from mesh.api import Mesh


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(vectors: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[str]:
    q = query / np.linalg.norm(query)
    scored = sorted((-float(v @ q), item_id) for item_id, v in vectors.items())
    return [item_id for _score, item_id in scored[:k]]


def test_changes_made_while_a_plan_is_scored_neither_tear_it_nor_leak_into_it() -> None:
    index = VectorIndex()
    rows = unit_rows(200, 16, seed=1)
    ids = [f"i{n:03d}" for n in range(200)]
    index.upsert_many("L3", ids, rows)
    index.remove("L3", "i199")  # a free row, which a change during the scoring must not reuse
    query = rows[7] + 0.1 * rows[8]
    plan = index.plan_search(query, k=5)
    assert plan is not None
    before = [h.item_id for h in index.search(query, k=5)]
    # Meanwhile (as if the loop ran while a thread scores): delete the best hit, replace
    # another's vector, and add an item identical to the query.
    index.remove("L3", before[0])
    index.upsert("L3", before[1], -rows[7])
    index.upsert("L3", "new", query)
    hits = [h.item_id for h in index.finish_search(plan, *plan.score())]
    plan.release()
    # The top 5 of the snapshot's items as they are at the finish: the deleted one left
    # out, the replaced one scored with its new vector (too far now), the next best moved
    # up so that there are still 5; nothing torn, nothing added meanwhile.
    assert hits[:3] == before[2:5] and len(hits) == 5
    now = {i: r for i, r in zip(ids, rows, strict=True) if i not in {"i199", before[0]}}
    now[before[1]] = -rows[7]
    assert brute_force(now, query, 5) == hits
    # Released: the replaced vector is stored, and a fresh search sees every change.
    assert [h.item_id for h in index.search(query, k=1)] == ["new"]
    assert [h.item_id for h in index.search(-rows[7], k=1)] == [before[1]]
    with pytest.raises(RuntimeError, match=r"after plan\.release"):
        index.finish_search(plan, *plan.score())


def test_a_vector_replaced_during_the_scoring_keeps_its_place_if_it_still_earns_it() -> None:
    index = VectorIndex()
    index.upsert_many("L1", ["a", "b", "c"], np.eye(3, dtype=np.float32))
    query = np.array([1.0, 0.5, 0.4])
    plan = index.plan_search(query, k=10)
    assert plan is not None
    index.upsert("L1", "c", [-1.0, 0.0, 0.1])  # now scores below every snapshot score
    hits = index.finish_search(plan, *plan.score())
    plan.release()
    assert [h.item_id for h in hits] == ["a", "b", "c"]  # k=10: every live item
    expected = (
        float(query @ [-1.0, 0.0, 0.1]) / np.linalg.norm(query) / np.linalg.norm([-1, 0, 0.1])
    )
    assert hits[2].score == pytest.approx(expected, rel=1e-5)


def test_a_search_planned_while_another_holds_the_block_sees_a_finished_write() -> None:
    index = VectorIndex()
    index.upsert_many("L1", ["a", "b", "c"], np.eye(3, dtype=np.float32))
    held = index.plan_search([0.0, 1.0, 0.0], k=1)  # scoring on a thread, say
    assert held is not None
    index.upsert("L1", "c", [1.0, 0.2, 0.0])  # done: its vector waits in `replaced`
    query = [1.0, 0.3, 0.0]  # c's new vector is the nearest, its old one the farthest
    assert [h.item_id for h in index.search(query, k=1)] == ["c"]
    assert [h.item_id for h in index.search(query, k=3)] == ["c", "a", "b"]
    held.release()
    assert [h.item_id for h in index.search(query, k=3)] == ["c", "a", "b"]


def test_no_stored_row_is_written_while_a_plan_is_frozen() -> None:
    index = VectorIndex()
    rows = unit_rows(10, 8, seed=2)
    index.upsert_many("L1", [f"a{n}" for n in range(10)], rows)
    index.remove("L1", "a3")
    plan = index.plan_search(rows[0], k=3)
    assert plan is not None
    snapshot = plan.vectors.copy()
    index.upsert("L1", "b", rows[5])  # would reuse a3's row
    index.upsert("L1", "a4", rows[9])  # waits to overwrite a4's row until released
    index.upsert("L1", "a5", rows[8])
    index.remove("L1", "a5")  # a replacement of a row freed meanwhile is forgotten
    index.upsert_many("L1", ["c", "d"], rows[:2])
    np.testing.assert_array_equal(plan.vectors, snapshot)
    plan.release()
    plan.release()  # idempotent
    index.upsert("L1", "e", rows[6])  # reuse resumes once released
    assert [h.item_id for h in index.search(rows[9], k=2)] == sorted(["a4", "a9"])


async def test_mesh_search_on_its_thread_matches_the_memory_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "SEARCH_OFF_LOOP_ELEMENTS", 0)  # every search goes off the loop
    rows = unit_rows(300, 32, seed=3)
    async with Mesh.open(tmp_path) as mesh:
        for n in range(0, 300, 100):
            await mesh.put_many(
                [
                    NewItem(tier="L3", content=f"item {i}", id=f"x{i:03d}", embedding=rows[i])
                    for i in range(n, n + 100)
                ]
            )
        for query in (rows[3], rows[17] - rows[40]):
            expected = mesh.memory.search(query, k=10, tiers=["L3", "L0"])
            assert await mesh.search(query, k=10, tiers=["L3", "L0"]) == expected
        assert mesh._searcher is not None  # it did run on the search thread
    assert mesh._searcher is None  # stopped at close


def gated_scoring(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Send every search to the search thread, where scoring waits for `gate`; return
    (`started`, set when scoring begins, and `gate`)."""
    monkeypatch.setattr(api, "SEARCH_OFF_LOOP_ELEMENTS", 0)
    started, gate = threading.Event(), threading.Event()
    score = SearchPlan.score

    def slow_score(plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
        started.set()
        assert gate.wait(timeout=10)
        return score(plan)

    monkeypatch.setattr(SearchPlan, "score", slow_score)
    return started, gate


async def test_a_cancelled_search_keeps_its_snapshot_frozen_until_its_thread_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, gate = gated_scoring(monkeypatch)
    async with Mesh.open(tmp_path) as mesh:
        await mesh.put("L3", "x", id="x", embedding=[1.0, 0.0])
        searching = asyncio.create_task(mesh.search([1.0, 0.0]))
        assert await asyncio.to_thread(started.wait, 10)
        searching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await searching
        block = mesh.memory._index._blocks[2]
        assert block.frozen == 1  # the thread still reads the snapshot
        gate.set()
        for _ in range(500):
            if block.frozen == 0:
                break
            await asyncio.sleep(0.01)
        assert block.frozen == 0
    with pytest.raises(RuntimeError, match="closed"):
        await mesh.search([1.0, 0.0])


async def test_a_search_waiting_for_its_turn_at_close_fails_and_starts_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, gate = gated_scoring(monkeypatch)
    mesh = Mesh.open(tmp_path)
    await mesh.__aenter__()
    await mesh.put("L3", "x", id="x", embedding=[1.0, 0.0])
    first = asyncio.create_task(mesh.search([1.0, 0.0]))
    assert await asyncio.to_thread(started.wait, 10)
    second = asyncio.create_task(mesh.search([0.0, 1.0]))  # waits for its turn
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(mesh.__aexit__(None, None, None))
    await asyncio.sleep(0.01)
    gate.set()
    await closing
    assert [h.item_id for h in await first] == ["x"]
    with pytest.raises(RuntimeError, match="closed"):
        await second
    assert mesh._searcher is None  # no thread pool was made after close
