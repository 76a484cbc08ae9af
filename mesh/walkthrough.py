"""`memmesh walkthrough`: a guided tour of one node's memory, then two replicas merging."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mesh.api import Mesh

DIM = 256
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "on",
        "in",
        "for",
        "by",
        "is",
        "its",
        "does",
        "what",
        "no",
        "user",
    ]
)


def toy_embedding(text: str) -> npt.NDArray[np.float32]:
    """Return a deterministic bag-of-words embedding (a stand-in for a real model)."""
    total = np.zeros(DIM, dtype=np.float64)
    for word in text.lower().split():
        if word in STOP_WORDS:
            continue
        seed = int.from_bytes(hashlib.sha256(word.strip(".,!?").encode()).digest()[:8], "big")
        total += np.random.default_rng(seed).standard_normal(DIM)
    norm = float(np.linalg.norm(total)) or 1.0
    return (total / norm).astype(np.float32)


def _step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}")


MEMORIES = [
    ("L1", "pref-coffee", "user drinks coffee black, no sugar", ["preference"]),
    ("L1", "task-report", "finish the quarterly report by friday", ["task"]),
    ("L2", "ep-standup", "standup meeting: team agreed to ship sync on monday", ["meeting"]),
    ("L2", "ep-trip", "user booked a train trip to lyon for the conference", ["travel"]),
    ("L3", "fact-lyon", "lyon is a city in france known for its food", ["geography"]),
    ("L3", "fact-crdt", "a crdt merges concurrent edits without coordination", ["computing"]),
]


async def run_walkthrough(*, keep: bool = False) -> None:
    """Run the tour in a temporary folder and print what happens at every step."""
    root = Path(tempfile.mkdtemp(prefix="memmesh-walkthrough-"))
    try:
        await _tour(root)
    finally:
        if keep:
            print(f"\ndata kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _tour(root: Path) -> None:
    laptop_dir, phone_dir = root / "laptop", root / "phone"
    print("memmesh walkthrough: one node's tiered memory, then two replicas that merge.")
    print(f"(data in {root}; the real network mesh arrives with `memmesh run`)")

    _step(1, "Store memories in the three replicated tiers (durable before put returns)")
    async with Mesh.open(laptop_dir) as laptop:
        print(f"laptop node id {laptop.node_id}")
        for tier, item_id, content, tags in MEMORIES:
            await laptop.put(tier, content, id=item_id, embedding=toy_embedding(content), tags=tags)
            print(f"  put {tier}/{item_id}: {content!r}")

        _step(2, "Search by meaning (cosine similarity over local embeddings)")
        for question in ("black coffee, no sugar", "train trip to lyon"):
            hits = await laptop.search(toy_embedding(question), k=2)
            best = ", ".join(f"{h.tier}/{h.item_id} ({h.score:.2f})" for h in hits)
            print(f"  {question!r} -> {best}")

        _step(3, "Move a memory between tiers, delete another")
        moved = await laptop.move("ep-trip", "L3")
        print(f"  moved ep-trip to {moved.tier} (L2 keeps a tombstone pointing to L3)")
        await laptop.delete("task-report")
        print("  deleted task-report (a tombstone replicates the delete)")
        for tier, info in laptop.status()["tiers"].items():
            print(f"  {tier}: {info['items']} live items, digest {info['digest'][:12]}")
        exported = {t: await laptop.export_tier(t) for t in laptop.memory.tiers}

    _step(4, "A second replica (the phone) receives the laptop's tiers")
    async with Mesh.open(phone_dir) as phone:
        for tier, update in exported.items():
            await phone.apply_update(tier, update)
        print(
            f"phone node id {phone.node_id}: "
            f"{sum(phone.memory.count(t) for t in phone.memory.tiers)} live items"
        )

        _step(5, "Both edit pref-coffee while apart: a conflict, visible and resolved")
        await phone.put(
            "L1",
            "user now drinks oat flat whites",
            id="pref-coffee",
            embedding=toy_embedding("user drinks oat flat white coffee"),
        )
        phone_l1 = await phone.export_tier("L1")
    async with Mesh.open(laptop_dir) as laptop:
        await laptop.put(
            "L1",
            "user drinks espresso, double",
            id="pref-coffee",
            embedding=toy_embedding("user drinks espresso coffee"),
        )
        laptop_l1 = await laptop.export_tier("L1")
        await laptop.apply_update("L1", phone_l1)
        laptop_view = await laptop.get("pref-coffee")
        versions = laptop.conflicts("pref-coffee")
        print(f"  laptop sees {len(versions)} concurrent versions:")
        for version in versions:
            print(f"    by {version.author} at {version.updated}: {version.content!r}")
        print(f"  resolved (lww: newest HLC, then node id): {laptop_view.content!r}")
        laptop_root = laptop.memory.digest("L1").root().hex()
    async with Mesh.open(phone_dir) as phone:
        await phone.apply_update("L1", laptop_l1)
        phone_view = await phone.get("pref-coffee")
        phone_root = phone.memory.digest("L1").root().hex()
        print(f"  phone resolves the same value: {phone_view.content == laptop_view.content}")
        print(f"  L1 Merkle roots equal: {laptop_root == phone_root} ({phone_root[:12]})")

        _step(6, "The next write collapses the conflict")
        await phone.put("L1", "user drinks espresso, or oat flat whites", id="pref-coffee")
        print(f"  versions now: {len(phone.conflicts('pref-coffee'))} in conflict")

        _step(7, "Every change is an event (local and remote), queryable by glob")
        for event in phone.events("L1/*")[-6:]:
            print(f"  #{event.seq:<3} {event.kind.value:<9} {event.origin:<6} {event.address}")

        _step(8, "Export a tier as a standard Yjs v1 update (any Yjs can read it)")
        out = root / "L3.yjs"
        out.write_bytes(await phone.export_tier("L3"))
        print(
            f"  wrote {out.name}: {out.stat().st_size} bytes, "
            f"{phone.memory.count('L3')} live L3 items"
        )
    print("\nDone. Try it yourself: memmesh put --data-dir ./node --tier L1 --content 'hello'")
