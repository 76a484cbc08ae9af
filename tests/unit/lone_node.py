"""Test helpers for a node with no peers and a store that fails on demand."""

from __future__ import annotations

from typing import Any

from mesh.api import Mesh
from mesh.store import SqliteStore, StoreFullError


class NullTransport:
    """A transport with no peers: a lone node."""

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        raise OSError("no peers here")

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        return False

    def disconnect(self, peer_id: str) -> None:
        return None


class RecordingTransport:
    """Links nobody by itself; records every frame sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        raise OSError("tests link peers by hand")

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        self.sent.append((peer_id, frame))
        return True

    def disconnect(self, peer_id: str) -> None:
        return None


def fail_next_commit(target: Mesh | SqliteStore) -> None:
    """Make the store's next commit fail as on a full disk; later ones succeed."""
    store = target._running().store if isinstance(target, Mesh) else target
    original, failures = store.commit, [1]

    def full_once(**kwargs: Any) -> None:
        if failures:
            failures.pop()
            raise StoreFullError(f"{store.path}: database or disk is full")
        original(**kwargs)

    store.commit = full_once  # type: ignore[method-assign]
