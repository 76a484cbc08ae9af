"""What the runner measures: which node holds which write, and a time series of the run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from simulations.world import World

SERIES_COLUMNS: tuple[str, ...] = (
    "t_s",
    "phase",
    "live_nodes",
    "items_written",
    "delivered_fraction",
    "complete_nodes_fraction",
    "frames_sent",
    "bytes_sent",
    "bytes_per_node",
    "frames_dropped",
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of the time series (simulated time, delivery, traffic so far)."""

    t_s: float
    phase: str
    live_nodes: int
    items_written: int
    delivered_fraction: float
    complete_nodes_fraction: float
    frames_sent: int
    bytes_sent: int
    bytes_per_node: float
    frames_dropped: int

    def row(self) -> tuple[object, ...]:
        """Return the values in `SERIES_COLUMNS` order, floats rounded for stable output."""
        return (
            f"{self.t_s:.3f}",
            self.phase,
            self.live_nodes,
            self.items_written,
            f"{self.delivered_fraction:.6f}",
            f"{self.complete_nodes_fraction:.6f}",
            self.frames_sent,
            self.bytes_sent,
            f"{self.bytes_per_node:.1f}",
            self.frames_dropped,
        )


class DeliveryTracker:
    """Which written items each live node still misses, updated incrementally.

    A node's holdings grow only when it applies a sync (`counters.syncs_applied`) or writes
    itself, so nodes whose counter did not move since the last look are skipped; a node
    rebooted from disk (new incarnation) is checked against every item again.
    """

    def __init__(self, world: World) -> None:
        """Track nothing yet."""
        self._world = world
        self._items: list[str] = []
        self._known: set[str] = set()
        self._missing: dict[str, set[str]] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # node -> (incarnation, syncs applied)

    @property
    def items(self) -> list[str]:
        """Return every item id written so far, in write order."""
        return list(self._items)

    def add(self, item_ids: Iterable[str], writer: str) -> None:
        """Record items `writer` just wrote: every other node misses them until seen holding."""
        new = [i for i in dict.fromkeys(item_ids) if i not in self._known]
        self._items.extend(new)
        self._known.update(new)
        for missing in self._missing.values():
            missing.update(new)
        self._seen.pop(writer, None)

    def refresh(self) -> None:
        """Look again at every live node whose holdings may have grown."""
        for node_id, sim in self._world.nodes.items():
            if not sim.alive:
                continue
            key = (sim.incarnation, sim.node.counters.syncs_applied)
            seen = self._seen.get(node_id)
            if seen == key:
                continue
            missing = self._missing.get(node_id)
            if missing is None or seen is None or seen[0] != key[0]:
                missing = set(self._items)
            memory = sim.node.memory
            self._missing[node_id] = {i for i in missing if i not in memory}
            self._seen[node_id] = key

    def delivered(self) -> tuple[int, int, int]:
        """Return (live nodes, nodes holding every item, (node, item) pairs delivered)."""
        live = complete = pairs = 0
        total = len(self._items)
        for node_id, sim in self._world.nodes.items():
            if not sim.alive:
                continue
            live += 1
            missing = len(self._missing.get(node_id, self._items))
            complete += missing == 0
            pairs += total - missing
        return live, complete, pairs

    def complete(self) -> bool:
        """Return True if every live node holds every written item."""
        live, complete, _pairs = self.delivered()
        return complete == live

    def missing_on_live(self, item_ids: Iterable[str]) -> bool:
        """Return True if some live node misses one of `item_ids` (checked directly)."""
        wanted = list(item_ids)
        return any(
            i not in sim.node.memory
            for sim in self._world.nodes.values()
            if sim.alive
            for i in wanted
        )
