"""Stateful exploration of the simulated mesh: writes, partitions, crashes, restarts, loss.

Hypothesis drives a `World` of 4-6 real `Node`s through random faults. After every step an
acknowledged write must be committed where the acknowledgement says; at the end the network
is repaired and every live node must converge to the same content holding every write.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdt.memory import NewItem
from mesh.frames import Priority
from mesh.inputs import AckLevel
from simulations.world import LinkModel, World, WriteRecord

TIERS = ("L1", "L2", "L3")
SETTLE_LIMIT_S = 90.0  # simulated seconds allowed for convergence once the network is whole
SETTLE_STEP_S = 1.0
WRITE_SETTLE_S = 0.3  # > the sim preset's 0.1 s sync interval
EVENTS_PER_SIM_SECOND = 20_000  # far above real traffic: more means timers spin in place


class MeshMachine(RuleBasedStateMachine):
    """A world of nodes under random faults; convergence is checked once repaired."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(0)
        self.ids: list[str] = []
        self.records: list[WriteRecord] = []
        self.committed: set[str] = set()  # items of writes a live node accepted
        self.levels: dict[int, AckLevel] = {}
        self.next_item = 0

    # ----------------------------------------------------------------- setup

    @initialize(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 6))
    def build(self, seed: int, n: int) -> None:
        self.world = World(seed)
        self.ids = [f"n{i}" for i in range(n)]
        for node_id in self.ids:
            self.world.add_node(node_id)
        self.run(2.0)

    # ----------------------------------------------------------------- helpers

    def alive_ids(self) -> list[str]:
        return [s.node_id for s in self.world.live()]

    def crashed_ids(self) -> list[str]:
        return [i for i in self.ids if not self.world.nodes[i].alive]

    def run(self, dt: float) -> None:
        """Advance the world by `dt`, failing (not hanging) if simulated time stops moving."""
        budget = int(EVENTS_PER_SIM_SECOND * max(dt, 1.0))
        events = 0

        def count() -> bool:
            nonlocal events
            events += 1
            assert events <= budget, f"over {budget} events in {dt}s: stuck at {self.world.now}"
            return False

        self.world.run_until(self.world.now + dt, stop=count)

    # ----------------------------------------------------------------- rules

    def put(self, data: st.DataObject, count: int, ack: AckLevel, priority: Priority) -> None:
        """Write `count` new items on a random node (refused if it is down)."""
        node_id = data.draw(st.sampled_from(self.ids), label="writer")
        items = []
        for _ in range(count):
            tier = data.draw(st.sampled_from(TIERS), label="tier")
            item_id = f"item-{self.next_item}"
            self.next_item += 1
            items.append(NewItem(tier, f"content of {item_id} by {node_id}", item_id))
        alive = self.world.nodes[node_id].alive
        record = self.world.write(node_id, items, ack=ack, priority=priority)
        self.records.append(record)
        self.levels[record.request_id] = ack
        if alive:
            assert record.failed is None
            self.committed.update(record.item_ids)
        else:
            assert record.failed is not None and record.acked_at is None
        # Let the batch go out under the current faults (a partition then loses it).
        self.run(WRITE_SETTLE_S)

    @rule(
        data=st.data(),
        count=st.integers(1, 3),
        ack=st.sampled_from([AckLevel.LOCAL, AckLevel.LOCAL, AckLevel.PEER]),
        priority=st.sampled_from([Priority.NORMAL, Priority.NORMAL, Priority.CRITICAL]),
    )
    def write(self, data: st.DataObject, count: int, ack: AckLevel, priority: Priority) -> None:
        self.put(data, count, ack, priority)

    @rule(data=st.data(), ack=st.sampled_from([AckLevel.LOCAL, AckLevel.PEER]))
    def write_in_a_short_partition(self, data: st.DataObject, ack: AckLevel) -> None:
        """Split, write on one side, heal before SWIM notices: only repair finds the loss."""
        self.partition(data)
        self.put(data, 1, ack, Priority.NORMAL)
        self.heal()

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        groups = data.draw(
            st.lists(st.integers(0, 2), min_size=len(self.ids), max_size=len(self.ids)),
            label="groups",
        )
        self.world.partition(
            [[i for i, g in zip(self.ids, groups, strict=True) if g == k] for k in (1, 2)]
        )

    @rule()
    def heal(self) -> None:
        self.world.heal()

    @precondition(lambda self: len(self.alive_ids()) > 2)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.world.crash(data.draw(st.sampled_from(self.alive_ids()), label="crash"))

    @precondition(lambda self: bool(self.crashed_ids()))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self.world.restart(data.draw(st.sampled_from(self.crashed_ids()), label="restart"))

    @rule(loss=st.floats(0.0, 0.2))
    def set_loss(self, loss: float) -> None:
        self.world.link = LinkModel(loss=loss)

    # Short steps keep a partition under SWIM's death timeout (only anti-entropy then repairs
    # what it lost); long ones let members die, drop links and come back.
    @rule(dt=st.one_of(st.floats(0.05, 1.5), st.floats(1.5, 12.0)))
    def advance(self, dt: float) -> None:
        self.run(dt)

    # ----------------------------------------------------------------- invariants

    @invariant()
    def acknowledged_writes_are_committed(self) -> None:
        """Acked `local`: on the writer's disk; acked `peer`: on another node's disk too."""
        for record in self.records:
            if record.acked_at is None:
                continue
            assert all(self.on_disk(record.node_id, i) for i in record.item_ids), record
            if self.levels[record.request_id] is AckLevel.PEER:
                assert any(
                    all(self.on_disk(other, i) for i in record.item_ids)
                    for other in self.ids
                    if other != record.node_id
                ), record

    def on_disk(self, node_id: str, item_id: str) -> bool:
        """Return True if a committed update of `node_id` writes a version of `item_id`."""
        key = f"{item_id}/".encode()  # tier map keys are ITEM_ID/WRITER
        return any(key in blob for _tier, blob in self.world.nodes[node_id].disk.updates)

    def teardown(self) -> None:
        world = self.world
        if not self.ids:
            return
        world.heal()
        world.link = LinkModel()
        for node_id in self.crashed_ids():
            world.restart(node_id)
        wanted = sorted(self.committed)
        limit = world.now + SETTLE_LIMIT_S
        while world.now < limit:
            self.run(SETTLE_STEP_S)
            if world.holds_everything(wanted) and world.digests_equal():
                break
        live = world.live()
        assert [s.node_id for s in live] == self.ids
        missing = {
            s.node_id: [i for i in wanted if i not in s.node.memory]
            for s in live
            if any(i not in s.node.memory for i in wanted)
        }
        assert not missing, f"items missing after {SETTLE_LIMIT_S}s of a whole network"
        first = live[0].node.memory
        content = sorted((it.id, it.tier, it.content) for it in first.items())
        assert [c[0] for c in content] == wanted
        for sim in live[1:]:
            memory = sim.node.memory
            assert sorted((it.id, it.tier, it.content) for it in memory.items()) == content
            for tier in TIERS:
                assert memory.digest(tier).root() == first.digest(tier).root(), (sim.node_id, tier)
        acked = [r for r in self.records if r.acked_at is not None]
        assert all(all(i in s.node.memory for i in r.item_ids) for r in acked for s in live)


MeshMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_mesh_converges_under_faults = MeshMachine.TestCase
