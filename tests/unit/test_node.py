"""Behaviour of the sans-IO `Node`, driven by hand: explicit `now`, no event loop, no sleeps.

`Net` is a tiny synchronous driver: it hands each `Send` to the target node as a
`FrameReceived` (first in, first out), turns `Connect` into `LinkUp` on both sides (or
`LinkDown` when the pair cannot link), `Disconnect` into `LinkDown` on the peer, and keeps
every other effect in a per-node log.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from pycrdt import Doc, Map

import crdt.tier as tier_module
from crdt.memory import NewItem, TieredMemory
from mesh.chunking import DEFAULT_MAX_TRANSFERS
from mesh.codec import decode_message, encode_message
from mesh.config import NodeConfig
from mesh.effects import (
    Connect,
    Disconnect,
    Effect,
    Log,
    Persist,
    QueryAnswered,
    Send,
    WriteAcked,
    WriteFailed,
)
from mesh.frames import HEADER, MAGIC, VERSION, Flags, Limits, MsgType, Priority
from mesh.inputs import (
    AckLevel,
    FrameReceived,
    ImportRequested,
    Input,
    LinkDown,
    LinkUp,
    PeerFound,
    QueryRequested,
    Tick,
    WriteRequested,
)
from mesh.messages import (
    Chunk,
    Digest,
    Hello,
    MemberState,
    MemberUpdate,
    MemoryQuery,
    MemoryResponse,
    MemorySync,
    Message,
    Ping,
    Resume,
    SyncAck,
    SyncKind,
)
from mesh.node import Node

TIERS = ("L1", "L2", "L3")
QUIET = {"anti_entropy_interval_s": 3600.0}  # keeps digests out of tests about other things


def make_node(node_id: str, config: NodeConfig | None = None, *, seed: int = 0) -> Node:
    rng = random.Random(f"{node_id}-{seed}")
    memory = TieredMemory(node_id=node_id, client_ids={t: rng.getrandbits(32) for t in TIERS})
    return Node(memory, config or NodeConfig.lan(), rng)


def message_of(send: Send) -> Message:
    return decode_message(send.frame)[1]


def sends(effects: Iterable[Effect]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def syncs(effects: Iterable[Effect], kind: SyncKind | None = None) -> list[MemorySync]:
    out = []
    for send in sends(effects):
        message = message_of(send)
        if isinstance(message, MemorySync) and (kind is None or message.kind is kind):
            out.append(message)
    return out


def roots(node: Node) -> list[bytes]:
    return [node.memory.digest(t).root() for t in TIERS]


def vector(seed: int, dim: int = 384) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class Net:
    """Synchronous delivery between hand-built nodes at an explicit time `now`."""

    def __init__(self, *nodes: Node) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.now = 0.0
        self.cut: set[frozenset[str]] = set()  # pairs that exchange nothing at all
        self.unlinkable: set[frozenset[str]] = set()  # pairs whose Connect fails
        self.muted: set[str] = set()  # nodes that neither receive nor answer (crashed)
        self.queue: deque[tuple[str, Input]] = deque()
        self.log: dict[str, list[Effect]] = {n: [] for n in self.nodes}
        self.sent: list[tuple[str, Send]] = []
        self.check_deadlines = False

    def reachable(self, a: str, b: str) -> bool:
        return (
            b in self.nodes
            and a not in self.muted
            and b not in self.muted
            and frozenset((a, b)) not in self.cut
        )

    def do(self, node_id: str, event: Input) -> list[Effect]:
        """Hand one input to a node now; route its effects; return them."""
        node = self.nodes[node_id]
        effects = node.handle(event, self.now)
        if self.check_deadlines:
            deadline = node.next_deadline()
            assert deadline is None or deadline >= self.now, (node_id, event, deadline)
            if isinstance(event, Tick):
                assert deadline is None or deadline > self.now, (node_id, deadline)
        self.log[node_id].extend(effects)
        for effect in effects:
            if isinstance(effect, Send):
                self.sent.append((node_id, effect))
                if self.reachable(node_id, effect.peer_id):
                    self.queue.append((effect.peer_id, FrameReceived(node_id, effect.frame)))
            elif isinstance(effect, Connect):
                peer = effect.peer_id
                pair = frozenset((node_id, peer))
                if self.reachable(node_id, peer) and pair not in self.unlinkable:
                    self.queue.append((node_id, LinkUp(peer)))
                    self.queue.append((peer, LinkUp(node_id)))
                else:
                    self.queue.append((node_id, LinkDown(peer)))
            elif isinstance(effect, Disconnect) and effect.peer_id in self.nodes:
                self.queue.append((effect.peer_id, LinkDown(node_id)))
        return effects

    def step(self) -> tuple[str, Input]:
        node_id, event = self.queue.popleft()
        if node_id not in self.muted:
            self.do(node_id, event)
        return node_id, event

    def settle(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            self.step()
        raise AssertionError("the network never went quiet")

    def link(self, a: str, b: str) -> None:
        self.do(a, LinkUp(b))
        self.do(b, LinkUp(a))
        self.settle()

    def advance(self, until: float, limit: int = 100_000) -> None:
        """Tick every node at each of its deadlines up to `until`, delivering in between."""
        for _ in range(limit):
            due = [
                (d, node_id)
                for node_id, node in sorted(self.nodes.items())
                if node_id not in self.muted and (d := node.next_deadline()) is not None
            ]
            deadline, node_id = min(due, default=(until + 1.0, ""))
            if deadline > until:
                self.now = until
                return
            self.now = max(self.now, deadline)
            self.do(node_id, Tick())
            self.settle()
        raise AssertionError(f"timers never got past {self.now}")

    def sent_since(self, mark: int, *, src: str | None = None) -> list[Send]:
        return [s for n, s in self.sent[mark:] if src is None or n == src]


def linked(*node_ids: str, config: NodeConfig | None = None) -> tuple[Net, list[Node]]:
    """Nodes with a link between every pair, after their initial sync."""
    nodes = [make_node(i, config) for i in node_ids]
    net = Net(*nodes)
    for i, a in enumerate(node_ids):
        for b in node_ids[i + 1 :]:
            net.link(a, b)
    return net, nodes


def new_items(prefix: str, count: int, tier: str = "L1") -> list[NewItem]:
    return [NewItem(tier, f"{prefix} number {i}", f"{prefix}-{i}") for i in range(count)]


def assert_persist_first(effects: Sequence[Effect]) -> None:
    """Every Persist comes before any Send and any WriteAcked of the same list."""
    persists = [i for i, e in enumerate(effects) if isinstance(e, Persist)]
    revealing = [i for i, e in enumerate(effects) if isinstance(e, Send | WriteAcked)]
    assert persists, "nothing was persisted"
    assert not revealing or max(persists) < min(revealing), [type(e).__name__ for e in effects]


# ----------------------------------------------------------------- links and initial sync


def test_link_up_sends_hello_then_one_step1_per_shared_tier() -> None:
    a = make_node("a")
    a.memory.put(NewItem("L1", "already here", "x1"), 1_000)
    effects = a.handle(LinkUp("b"), 1.0)
    out = sends(effects)
    assert [s.peer_id for s in out] == ["b"] * 4
    hello, *step1 = [message_of(s) for s in out]
    assert isinstance(hello, Hello)
    assert (hello.node_id, hello.tiers) == ("a", TIERS)
    assert all(isinstance(m, MemorySync) for m in step1)
    assert [(m.kind, m.tier, m.source, m.target) for m in step1] == [  # type: ignore[union-attr]
        (SyncKind.STEP1, t, "a", "b") for t in TIERS
    ]
    assert [m.body for m in step1] == [  # type: ignore[union-attr]
        a.memory.tier_doc(t).state_vector() for t in TIERS
    ]
    assert a.links == {"b"}
    assert a.membership.state_of("b") is MemberState.ALIVE


def test_link_up_sends_step1_only_for_tiers_the_peer_replicates() -> None:
    a = make_node("a")
    a.handle(PeerFound("b", tiers=("L1", "L3")), 0.0)
    effects = a.handle(LinkUp("b"), 0.1)
    assert [m.tier for m in syncs(effects, SyncKind.STEP1)] == ["L1", "L3"]


def test_initial_sync_converges_two_nodes_with_existing_data() -> None:
    a, b = make_node("a"), make_node("b")
    a.memory.put_many(
        [
            NewItem("L1", "a's working note", "a-note"),
            NewItem("L2", "a's episode", "a-episode"),
            NewItem("L3", "a's fact", "a-fact", embedding=vector(1)),
            NewItem("L1", "written on a", "both"),
        ],
        1_000,
    )
    b.memory.put_many(
        [
            NewItem("L2", "b's episode", "b-episode"),
            NewItem("L3", "b's fact", "b-fact", embedding=vector(2)),
            NewItem("L1", "written on b", "both"),
        ],
        2_000,
    )
    assert roots(a) != roots(b)
    net = Net(a, b)
    net.link("a", "b")
    assert roots(a) == roots(b)
    for node in (a, b):
        ids = sorted(item.id for item in node.memory.items())
        assert ids == ["a-episode", "a-fact", "a-note", "b-episode", "b-fact", "both"]
        assert node.memory.get("both").content == "written on b"  # lww, newer HLC
    # Each side persisted what it received.
    assert any(isinstance(e, Persist) for e in net.log["a"])
    assert any(isinstance(e, Persist) for e in net.log["b"])
    assert a.counters.syncs_applied >= 1 and b.counters.syncs_applied >= 1


# ----------------------------------------------------------------- batching and ordering


def test_normal_write_is_batched_until_the_sync_interval() -> None:
    config = NodeConfig.lan(sync_interval_s=0.5, **QUIET)
    net, (a, b) = linked("a", "b", config=config)
    net.advance(1.0)
    mark = len(net.sent)
    first = net.do("a", WriteRequested(1, puts=new_items("w", 2, "L1")))
    assert not sends(first)
    assert [type(e) for e in first[:1]] == [Persist]
    net.advance(1.2)
    second = net.do("a", WriteRequested(2, puts=[NewItem("L2", "episode", "e1")]))
    assert not sends(second)
    net.advance(1.49)  # the batch is due at 1.0 + 0.5
    assert not syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)
    assert "w-0" not in b.memory
    net.advance(1.5)
    updates = syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)
    assert [(m.tier, m.items, m.target) for m in updates] == [("L1", 1, "*"), ("L2", 1, "*")]
    assert all(i in b.memory for i in ("w-0", "w-1", "e1"))
    assert roots(a) == roots(b)


def test_normal_writes_to_one_tier_are_merged_into_one_sync() -> None:
    config = NodeConfig.lan(sync_interval_s=0.5, **QUIET)
    net, (_a, b) = linked("a", "b", config=config)
    mark = len(net.sent)
    for request in range(3):
        net.do("a", WriteRequested(request, puts=[NewItem("L1", "v", f"m{request}")]))
        net.now += 0.1
    net.advance(0.6)
    updates = syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)
    assert [(m.tier, m.items) for m in updates] == [("L1", 3)]
    assert {"m0", "m1", "m2"} <= {item.id for item in b.memory.items()}


@pytest.mark.parametrize("priority", [Priority.CRITICAL, Priority.EMERGENCY])
def test_urgent_write_flushes_at_once_with_what_was_queued(priority: Priority) -> None:
    config = NodeConfig.lan(sync_interval_s=0.5, **QUIET)
    net, (_a, b) = linked("a", "b", config=config)
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "normal", "n1")]))
    effects = net.do(
        "a", WriteRequested(2, puts=[NewItem("L1", "urgent", "u1")], priority=priority)
    )
    out = [s for s in sends(effects) if isinstance(message_of(s), MemorySync)]
    assert len(out) == 1 and out[0].peer_id == "b" and out[0].priority is priority
    frame, message = decode_message(out[0].frame)
    assert frame.priority is priority
    assert isinstance(message, MemorySync)
    assert (message.kind, message.tier, message.items) == (SyncKind.UPDATE, "L1", 2)
    net.settle()
    assert "n1" in b.memory and "u1" in b.memory
    mark = len(net.sent)
    net.advance(1.0)  # nothing left queued for the interval
    assert not syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)


@pytest.mark.parametrize("ack", [AckLevel.LOCAL, AckLevel.PEER])
def test_persist_comes_before_any_send_and_before_write_acked(ack: AckLevel) -> None:
    a, b = make_node("a", NodeConfig.lan(**QUIET)), make_node("b", NodeConfig.lan(**QUIET))
    a.memory.put_many([NewItem("L2", "to move", "mv"), NewItem("L1", "to delete", "dl")], 0)
    net = Net(a, b)
    net.link("a", "b")
    request = WriteRequested(
        1,
        puts=[NewItem("L1", "new", "p1"), NewItem("L3", "fact", "p3")],
        delete_ids=["dl"],
        moves=[("mv", "L3")],
        ack=ack,
        priority=Priority.CRITICAL,
    )
    effects = net.do("a", request)
    assert_persist_first(effects)
    persisted = {u for e in effects if isinstance(e, Persist) for _t, u in e.change.updates}
    assert len(persisted) == 5  # put: L1 + L3; delete: L1; move: L3 + tombstone in L2
    updates = syncs(effects, SyncKind.UPDATE)
    assert sorted(m.tier for m in updates) == ["L1", "L2", "L3"]
    if ack is AckLevel.LOCAL:
        assert [e.request_id for e in effects if isinstance(e, WriteAcked)] == [1]
    # The receiver commits each batch before it acknowledges it.
    checked = 0
    while net.queue:
        node_id, event = net.queue.popleft()
        received = net.do(node_id, event)
        frame = event.data if isinstance(event, FrameReceived) else b""
        if node_id == "b" and syncs([Send("b", frame)] if frame else [], SyncKind.UPDATE):
            assert_persist_first(received)
            acks = [s for s in sends(received) if isinstance(message_of(s), SyncAck)]
            assert len(acks) == (1 if ack is AckLevel.PEER else 0)
            checked += 1
    assert checked == 3  # one batch per tier
    assert "p1" in b.memory and "dl" not in b.memory and b.memory.get("mv").tier == "L3"
    assert roots(a) == roots(b)


def test_a_refused_write_persists_nothing_and_sends_nothing() -> None:
    net, (a, _b) = linked("a", "b")
    effects = net.do("a", WriteRequested(1, puts=[NewItem("L9", "no such tier", "bad")]))
    assert [type(e) for e in effects] == [WriteFailed]
    assert effects[0].applied is False  # type: ignore[union-attr]
    assert "bad" not in a.memory and len(a.acks) == 0
    net.advance(1.0)  # nothing was queued for the next flush either
    assert not syncs(net.sent_since(0, src="a"), SyncKind.UPDATE)


@pytest.mark.parametrize("priority", [Priority.NORMAL, Priority.CRITICAL])
def test_a_write_failing_part_way_persists_and_replicates_the_parts_applied(
    priority: Priority,
) -> None:
    net, (a, b) = linked("a", "b")
    request = WriteRequested(
        1, puts=[NewItem("L1", "kept", "p1")], delete_ids=["no-such-id"], priority=priority
    )
    effects = net.do("a", request)
    failed = [e for e in effects if isinstance(e, WriteFailed)]
    assert len(failed) == 1 and failed[0].applied is True
    persisted = [e.change for e in effects if isinstance(e, Persist)]
    assert any(t == "L1" for change in persisted for t, _u in change.updates)
    last_persist = max(i for i, e in enumerate(effects) if isinstance(e, Persist))
    assert effects.index(failed[0]) > last_persist
    net.settle()
    net.advance(1.0)  # a NORMAL write goes out with the next flush
    assert b.memory.get("p1").content == "kept"
    assert roots(a) == roots(b)


# ----------------------------------------------------------------- acknowledgements


def test_local_ack_is_immediate() -> None:
    a = make_node("a")
    effects = a.handle(WriteRequested(7, puts=[NewItem("L1", "v", "x")]), 0.0)
    acked = [e for e in effects if isinstance(e, WriteAcked)]
    assert [(e.request_id, [i.id for i in e.items], e.acked_by) for e in acked] == [(7, ["x"], ())]
    assert len(a.acks) == 0


def test_peer_ack_waits_for_the_flush_and_one_sync_ack() -> None:
    config = NodeConfig.lan(sync_interval_s=0.5, **QUIET)
    net, (a, _b) = linked("a", "b", config=config)
    effects = net.do("a", WriteRequested(1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.PEER))
    assert not [e for e in effects if isinstance(e, WriteAcked | WriteFailed)]
    mark = len(net.sent)
    net.advance(0.5)
    update = [s for s in net.sent_since(mark, src="a") if isinstance(message_of(s), MemorySync)]
    assert len(update) == 1
    frame, message = decode_message(update[0].frame)
    assert frame.flags & Flags.REQUIRES_ACK
    acks = [message_of(s) for s in net.sent_since(mark, src="b")]
    assert SyncAck(message.batch_id, "b") in acks  # type: ignore[union-attr]
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked)]
    assert [(e.request_id, e.acked_by) for e in done] == [(1, ("b",))]
    assert len(a.acks) == 0


def test_peer_ack_takes_the_first_peer_of_several() -> None:
    net, (_a, _b, _c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    net.do(
        "a",
        WriteRequested(
            1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.PEER, priority=Priority.EMERGENCY
        ),
    )
    net.settle()
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked | WriteFailed)]
    assert len(done) == 1 and isinstance(done[0], WriteAcked)
    assert done[0].acked_by in (("b",), ("c",))


def test_an_update_held_back_behind_a_lost_one_is_not_acked() -> None:
    """Regression: a batch that b could not integrate yet (an earlier one was lost) was
    acknowledged anyway, so `peer` durability was claimed for a write b had not committed."""
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(**QUIET))
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "lost", "w1")], priority=Priority.CRITICAL))
    net.queue.clear()  # the first batch is lost on the way
    second = WriteRequested(
        2, puts=[NewItem("L1", "second", "w2")], ack=AckLevel.PEER, priority=Priority.CRITICAL
    )
    frame = sends(net.do("a", second))[0].frame
    net.queue.clear()
    effects = net.do("b", FrameReceived("a", frame))
    assert "w2" not in b.memory  # held back until w1 arrives
    assert not [s for s in sends(effects) if isinstance(message_of(s), SyncAck)]
    assert not any(isinstance(e, Persist) for e in effects)
    assert [m.tier for m in syncs(effects, SyncKind.STEP1)] == ["L1"]  # b pulls what it lacks
    again = net.do("b", FrameReceived("a", frame))  # a duplicate is not acked either
    assert not [s for s in sends(again) if isinstance(message_of(s), SyncAck)]
    net.settle()
    assert "w1" in b.memory and "w2" in b.memory


def test_a_held_batch_is_acked_once_the_repair_brings_it_in() -> None:
    """Regression: the held batch was never acked after the repair integrated it, so its
    `peer` write failed at the timeout although b held it durably."""
    net, (a, b) = linked("a", "b", config=NodeConfig.lan(**QUIET))
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "lost", "w1")], priority=Priority.CRITICAL))
    net.queue.clear()  # the first batch is lost on the way
    second = WriteRequested(
        2, puts=[NewItem("L1", "second", "w2")], ack=AckLevel.PEER, priority=Priority.CRITICAL
    )
    net.do("a", second)
    mark = len(net.sent)
    net.settle()  # b holds w2, pulls what it lacks, a's answer brings w1 (and w2) in
    assert "w1" in b.memory and "w2" in b.memory
    acks = [s for s in net.sent_since(mark, src="b") if isinstance(message_of(s), SyncAck)]
    assert len(acks) == 1
    assert [e.request_id for e in net.log["a"] if isinstance(e, WriteAcked)] == [1, 2]
    net.advance(net.now + 11.0)
    assert not [e for e in net.log["a"] if isinstance(e, WriteFailed)]
    assert roots(a) == roots(b)


SMALL_FRAMES = NodeConfig.lan(limits=Limits(max_frame_bytes=4096), **QUIET)


def big_write(request_id: int, ack: AckLevel) -> WriteRequested:
    """A write whose batch needs several 4 KiB frames."""
    items = [NewItem("L1", "x" * 200 + str(i), f"big-{i}") for i in range(40)]
    return WriteRequested(request_id, puts=items, ack=ack, priority=Priority.CRITICAL)


def test_a_chunked_batch_is_acked_once_complete_whatever_the_piece_order() -> None:
    """Regression: only the piece with the last index acked, so a body completed by another
    piece (frames reordered) was never acked and the `peer` write timed out."""
    net, (_a, b) = linked("a", "b", config=SMALL_FRAMES)
    net.do("a", big_write(1, AckLevel.PEER))
    pieces = list(net.queue)
    net.queue.clear()
    assert len(pieces) > 2
    for node_id, event in reversed(pieces):
        net.do(node_id, event)
    net.settle()
    assert all(f"big-{i}" in b.memory for i in range(40))
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked | WriteFailed)]
    assert [(type(e), e.request_id) for e in done] == [(WriteAcked, 1)]


def test_a_repeated_last_piece_does_not_ack_an_incomplete_batch() -> None:
    """Regression: a duplicate of the last piece (flooded over another link) was acked
    although the body had not arrived: durability claimed for a write nobody held."""
    net, (a, b, c) = linked("a", "b", "c", config=SMALL_FRAMES)
    net.do("a", big_write(1, AckLevel.PEER))
    last_to_b = [q for q in net.queue if q[0] == "b"][-1]
    last_to_c = [q for q in net.queue if q[0] == "c"][-1]
    net.queue.clear()
    net.do(*last_to_c)  # c forwards it to b ...
    net.do(*last_to_b)  # ... and b to c: each then sees a duplicate
    net.settle()
    assert (b.counters.duplicates_dropped, c.counters.duplicates_dropped) == (1, 1)
    assert "big-0" not in b.memory and "big-0" not in c.memory
    assert not [e for e in net.log["a"] if isinstance(e, WriteAcked)]
    assert len(a.acks) == 1


def test_peer_ack_fails_at_the_timeout_when_nobody_answers() -> None:
    a = make_node("a")
    request = WriteRequested(
        1,
        puts=[NewItem("L1", "v", "x")],
        ack=AckLevel.PEER,
        priority=Priority.CRITICAL,
        timeout_s=2.0,
    )
    effects = a.handle(request, 0.0)
    assert not [e for e in effects if isinstance(e, WriteAcked | WriteFailed)]
    assert len(a.acks) == 1
    early = a.handle(Tick(), 1.99)
    assert not [e for e in early if isinstance(e, WriteAcked | WriteFailed)]
    deadline = a.next_deadline()
    assert deadline is not None and deadline <= 2.0
    late = a.handle(Tick(), 2.0)
    failed = [e for e in late if isinstance(e, WriteFailed)]
    assert [(e.request_id, e.applied) for e in failed] == [(1, True)]
    assert "x" in a.memory  # committed here, only the durability was not confirmed
    assert len(a.acks) == 0


def test_all_ack_waits_for_every_member_and_fails_when_one_never_answers() -> None:
    net, (a, _b, _c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    net.now = 1.0
    net.muted.add("c")  # c crashed: it never answers
    net.do(
        "a",
        WriteRequested(
            1,
            puts=[NewItem("L1", "v", "x")],
            ack=AckLevel.ALL,
            priority=Priority.CRITICAL,
            timeout_s=0.5,
        ),
    )
    net.settle()  # b acks
    assert not [e for e in net.log["a"] if isinstance(e, WriteAcked | WriteFailed)]
    assert len(a.acks) == 1
    net.now = 1.5
    effects = net.do("a", Tick())
    failed = [e for e in effects if isinstance(e, WriteFailed)]
    assert [(e.request_id, e.applied) for e in failed] == [(1, True)]
    assert "1 peer(s) confirmed" in failed[0].reason


def test_an_ack_in_another_nodes_name_is_refused() -> None:
    net, (a, _b, _c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    net.now = 1.0
    net.muted.add("c")  # c never answers; b then answers in its name
    written = net.do(
        "a",
        WriteRequested(
            1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.ALL, priority=Priority.CRITICAL
        ),
    )
    (batch_id,) = {m.batch_id for m in syncs(written)}
    net.settle()  # b's own ack arrives
    bad_before = a.counters.bad_frames
    effects = net.do("a", FrameReceived("b", encode_message(SyncAck(batch_id, "c"))))
    assert not [e for e in effects if isinstance(e, WriteAcked)]
    assert a.counters.bad_frames == bad_before + 1
    assert len(a.acks) == 1  # still waiting for c itself


def test_all_ack_completes_when_every_member_answers() -> None:
    net, (_a, _b, _c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    net.do(
        "a",
        WriteRequested(
            1, puts=[NewItem("L2", "v", "x")], ack=AckLevel.ALL, priority=Priority.CRITICAL
        ),
    )
    net.settle()
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked)]
    assert [(e.request_id, e.acked_by) for e in done] == [(1, ("b", "c"))]


def test_all_ack_stops_waiting_for_a_member_that_dies() -> None:
    net, (a, _b, _c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    net.muted.add("c")
    net.do(
        "a",
        WriteRequested(
            1,
            puts=[NewItem("L1", "v", "x")],
            ack=AckLevel.ALL,
            priority=Priority.CRITICAL,
            timeout_s=30.0,
        ),
    )
    net.settle()
    assert not [e for e in net.log["a"] if isinstance(e, WriteAcked)]
    net.advance(10.0)  # SWIM declares c dead well before the 30 s timeout
    assert a.membership.state_of("c") is MemberState.DEAD
    assert Disconnect("c", "dead") in net.log["a"]
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked | WriteFailed)]
    assert [(type(e), e.request_id) for e in done] == [(WriteAcked, 1)]
    assert done[0].acked_by == ("b",)  # type: ignore[union-attr]
    assert "c" not in a.links


# ----------------------------------------------------------------- flooding


def line() -> tuple[Net, Node, Node, Node]:
    """Three nodes A - B - C: A and C cannot reach each other."""
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    net = Net(a, b, c)
    net.cut.add(frozenset("ac"))
    net.link("a", "b")
    net.link("b", "c")
    return net, a, b, c


def test_flooded_update_reaches_the_far_end_of_a_line_through_the_middle() -> None:
    net, a, b, c = line()
    mark = len(net.sent)
    net.do(
        "a", WriteRequested(1, puts=[NewItem("L1", "flood me", "f1")], priority=Priority.CRITICAL)
    )
    net.settle()
    assert "f1" in b.memory and "f1" in c.memory
    updates = [(src, s) for src, s in net.sent[mark:] if syncs([s], SyncKind.UPDATE)]
    assert [(src, s.peer_id) for src, s in updates] == [("a", "b"), ("b", "c")]
    assert updates[1][1].frame == updates[0][1].frame  # forwarded verbatim: same batch id
    assert roots(a) == roots(b) == roots(c)


def test_duplicate_flood_is_dropped_and_not_forwarded_again() -> None:
    net, _a, b, c = line()
    effects = net.do(
        "a", WriteRequested(1, puts=[NewItem("L1", "once", "f1")], priority=Priority.CRITICAL)
    )
    frame = next(s.frame for s in sends(effects) if s.peer_id == "b")
    net.settle()
    applied = b.counters.syncs_applied
    again = net.do("b", FrameReceived("a", frame))
    assert b.counters.duplicates_dropped == 1
    assert b.counters.syncs_applied == applied
    assert not any(isinstance(e, Persist) for e in again)
    assert not syncs(again)  # neither applied nor flooded on to c
    assert c.counters.duplicates_dropped == 0


def test_flood_in_a_triangle_is_applied_once_everywhere() -> None:
    net, (a, b, c) = linked("a", "b", "c", config=NodeConfig.lan(**QUIET))
    mark = len(net.sent)
    applied = (b.counters.syncs_applied, c.counters.syncs_applied)
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "v", "t1")], priority=Priority.EMERGENCY))
    net.settle()
    updates = [(src, s.peer_id) for src, s in net.sent[mark:] if syncs([s], SyncKind.UPDATE)]
    # a to both; b and c each forward once to the other (never back to the source a) ...
    assert sorted(updates) == [("a", "b"), ("a", "c"), ("b", "c"), ("c", "b")]
    # ... and each drops the copy that comes second.
    assert (b.counters.duplicates_dropped, c.counters.duplicates_dropped) == (1, 1)
    assert (b.counters.syncs_applied, c.counters.syncs_applied) == (applied[0] + 1, applied[1] + 1)
    assert a.counters.duplicates_dropped == 0
    assert roots(a) == roots(b) == roots(c)


def test_chunked_flood_reassembles_pieces_arriving_over_different_links() -> None:
    """Regression: pieces were reassembled per neighbour, so a body whose pieces came partly
    direct and partly forwarded (the rest deduplicated) never completed."""
    net, (_a, _b, c) = linked("a", "b", "c", config=SMALL_FRAMES)
    net.do("a", big_write(1, AckLevel.LOCAL))
    to_b = [q for q in net.queue if q[0] == "b"]
    to_c = [q for q in net.queue if q[0] == "c"]
    assert len(to_c) > 2  # chunked
    net.queue.clear()
    for node_id, event in to_b:  # b forwards every piece to c
        net.do(node_id, event)
    forwarded = [q for q in net.queue if q[0] == "c"]
    net.queue.clear()
    net.do(*to_c[0])  # c: piece 0 direct, the rest first through b ...
    for node_id, event in forwarded[1:]:
        net.do(node_id, event)
    for node_id, event in [*to_c[1:], forwarded[0]]:  # ... then the duplicates
        net.do(node_id, event)
    net.settle()
    assert all(f"big-{i}" in c.memory for i in range(40))
    assert c.transfers() == []


# ----------------------------------------------------------------- bad input


def valid_update_frame(source: Node) -> bytes:
    change = source.memory.put(NewItem("L1", "valid", "valid-1"), 1_000)
    ((tier, update),) = change.updates
    message = MemorySync(b"\x01" * 16, source.node_id, "*", tier, SyncKind.UPDATE, update, 1)
    return encode_message(message)


def flipped_body(source: Node) -> bytes:
    frame = bytearray(valid_update_frame(source))
    frame[-1] ^= 0xFF  # the body is the payload's last field
    return bytes(frame)


def oversize(_source: Node) -> bytes:
    size = NodeConfig.lan().limits.max_frame_bytes
    header = HEADER.pack(MAGIC, VERSION, 1, int(MsgType.PING), 0, 0, size, 0, 0)
    return header + b"\x00" * size


def garbage_yjs(source: Node) -> bytes:
    body = b"this is not a yjs update"
    message = MemorySync(b"\x02" * 16, source.node_id, "*", "L1", SyncKind.UPDATE, body, 1)
    return encode_message(message)


def garbage(_source: Node) -> bytes:
    return b"\x00garbage bytes, not a frame"


BAD_FRAMES: dict[str, tuple[Callable[[Node], bytes], str]] = {
    "garbage": (garbage, "shorter than"),
    "flipped body byte": (flipped_body, "checksum"),
    "oversize": (oversize, "over the cap"),
    "garbage yjs body": (garbage_yjs, "Yjs"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frame_is_logged_counted_and_the_node_keeps_working(name: str) -> None:
    build, reason = BAD_FRAMES[name]
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(**QUIET))
    before = roots(b)
    effects = net.do("b", FrameReceived("a", build(make_node("a", seed=9))))
    assert [type(e) for e in effects] == [Log]
    log = effects[0]
    assert isinstance(log, Log) and log.level == "warning"
    assert log.fields["peer"] == "a" and reason in log.fields["reason"]
    assert (b.counters.bad_frames, b.counters.bad_frames_by_peer) == (1, {"a": 1})
    assert roots(b) == before and b.links == {"a"}
    net.do(
        "a",
        WriteRequested(1, puts=[NewItem("L1", "still fine", "good")], priority=Priority.CRITICAL),
    )
    net.settle()
    assert "good" in b.memory


def test_garbage_yjs_body_with_a_plausible_header_is_refused() -> None:
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(**QUIET))
    body = b"\x01\x05this is not a yjs update at all"
    message = MemorySync(b"\x03" * 16, "a", "*", "L1", SyncKind.UPDATE, body, 1)
    effects = net.do("b", FrameReceived("a", encode_message(message)))
    assert b.memory.tier_doc("L1").held_updates == 0
    assert [type(e) for e in effects] == [Log] and b.counters.bad_frames == 1


def test_peer_is_disconnected_after_too_many_bad_frames() -> None:
    config = NodeConfig.lan(bad_frames_before_disconnect=3, **QUIET)
    net, (_a, b, _c) = linked("a", "b", "c", config=config)
    for _ in range(2):
        effects = net.do("b", FrameReceived("a", b"junk"))
        assert not [e for e in effects if isinstance(e, Disconnect)]
    net.do("b", FrameReceived("c", b"junk from c"))  # counted against c, not a
    assert b.links == {"a", "c"}
    effects = net.do("b", FrameReceived("a", b"junk"))
    assert [e.peer_id for e in effects if isinstance(e, Disconnect)] == ["a"]
    assert b.links == {"c"}
    assert b.counters.bad_frames_by_peer == {"a": 3, "c": 1}
    assert b.counters.bad_frames == 4


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(bad_frames_before_disconnect=10**9))
    good = valid_update_frame(make_node("a", seed=3))
    for i in range(300):
        if i % 2:
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            frame = bytes(data)
        else:
            frame = rng.randbytes(rng.randrange(0, 200))
        net.do("b", FrameReceived("a", frame))
    assert b.counters.bad_frames > 250
    net.do(
        "a",
        WriteRequested(
            1, puts=[NewItem("L2", "after the storm", "ok")], priority=Priority.CRITICAL
        ),
    )
    net.settle()
    assert "ok" in b.memory


# ----------------------------------------------------------------- chunked initial sync


@pytest.fixture(scope="module")
def big_l3() -> list[NewItem]:
    """2,000 items with 384-d embeddings: their L3 body needs several 256 KiB frames."""
    return [NewItem("L3", f"fact {i}", f"fact-{i}", embedding=vector(i)) for i in range(2_000)]


ONE_BODY = {"step2_batch_bytes": 64 << 20}  # the whole diff as one (chunked) STEP2 body


def start_big_sync(items: list[NewItem], **overrides: object) -> tuple[Net, Node, Node]:
    settings = {**QUIET, **ONE_BODY, **overrides}
    a, b = make_node("a", NodeConfig.lan(**settings)), make_node("b", NodeConfig.lan(**settings))
    a.memory.put_many(items, 1_000)
    net = Net(a, b)
    net.do("a", LinkUp("b"))
    net.do("b", LinkUp("a"))
    return net, a, b


def chunk_frames(sent: Iterable[Send]) -> list[MemorySync]:
    return [m for m in syncs(sent) if m.chunk is not None]


def test_big_initial_sync_is_chunked_reports_progress_and_applies(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3)
    progress = []
    while net.queue:
        net.step()
        progress.extend(b.transfers())
    pieces = chunk_frames(net.sent_since(0, src="a"))
    total = pieces[0].chunk.total  # type: ignore[union-attr]
    assert total > 2 and len(pieces) == total
    assert [p.chunk.index for p in pieces] == list(range(total))  # type: ignore[union-attr]
    assert all(len(s.frame) <= a.config.limits.max_frame_bytes for s in net.sent_since(0))
    body_bytes = pieces[0].chunk.total_bytes  # type: ignore[union-attr]
    assert body_bytes > a.config.limits.max_frame_bytes
    assert progress, "no progress was reported while the transfer was incomplete"
    assert {(p.peer_id, p.tier, p.bytes_total, p.items_total) for p in progress} == {
        ("a", "L3", body_bytes, 2_000)
    }
    done = [p.bytes_done for p in progress]
    assert done == sorted(done) and len(set(done)) == total - 1 and max(done) < body_bytes
    assert b.transfers() == []
    assert b.memory.count("L3") == 2_000
    assert roots(a) == roots(b)


def interrupt_after(net: Net, pieces: int) -> None:
    """Deliver until `b` got `pieces` chunk frames, then drop the link and what is in flight."""
    got = 0
    while got < pieces:
        node_id, event = net.step()
        if node_id == "b" and isinstance(event, FrameReceived):
            got += len(chunk_frames([Send("b", event.data)]))
    net.queue.clear()
    net.do("a", LinkDown("b"))
    net.do("b", LinkDown("a"))


def test_interrupted_big_sync_resumes_from_the_next_missing_chunk(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3)
    interrupt_after(net, 3)
    total = chunk_frames(net.sent_since(0, src="a"))[0].chunk.total  # type: ignore[union-attr]
    (partial,) = b.transfers()
    assert 0 < partial.bytes_done < partial.bytes_total
    assert b.memory.count("L3") == 0
    net.now += 0.5  # reconnect (within the step1 guard)
    mark = len(net.sent)
    net.link("a", "b")
    resumes = [m for s in net.sent_since(mark, src="b") if isinstance(m := message_of(s), Resume)]
    assert [r.next_index for r in resumes] == [3]
    again = chunk_frames(net.sent_since(mark, src="a"))
    assert [m.chunk.index for m in again] == list(range(3, total))  # type: ignore[union-attr]
    assert len(again) < total
    assert b.transfers() == []
    assert b.memory.count("L3") == 2_000
    assert roots(a) == roots(b)


def test_resume_after_the_step1_guard_does_not_resend_the_whole_body(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3)
    interrupt_after(net, 3)
    total = chunk_frames(net.sent_since(0, src="a"))[0].chunk.total  # type: ignore[union-attr]
    net.now += a.config.step1_guard_s + 1.0
    mark = len(net.sent)
    net.link("a", "b")
    assert b.memory.count("L3") == 2_000
    assert len(chunk_frames(net.sent_since(mark, src="a"))) < total


def test_a_transfer_its_restarted_sender_cannot_resume_is_pulled_afresh(
    big_l3: list[NewItem],
) -> None:
    """Regression: the receiver sent RESUME at every reconnect and never pulled the tier."""
    net, a, b = start_big_sync(big_l3)
    interrupt_after(net, 3)
    restarted = Node(a.memory, a.config, random.Random("a-restarted"))  # no transfer cache
    net.nodes["a"] = restarted
    counts = []
    for _ in range(2):
        net.now += 10.0
        mark = len(net.sent)
        net.link("a", "b")
        resumes = [s for s in net.sent_since(mark, src="b") if isinstance(message_of(s), Resume)]
        counts.append((len(resumes), b.memory.count("L3")))
        net.do("a", LinkDown("b"))
        net.do("b", LinkDown("a"))
    assert counts == [(1, 0), (0, 2_000)]  # asked once, then pulled the whole tier
    assert b.transfers() == []
    assert roots(restarted) == roots(b)


SLICE = 256 << 10


def step2_slices(sent: Iterable[Send], tier: str = "L3") -> list[tuple[Flags, bytes]]:
    """Return each STEP2 body of `tier` sent (pieces joined) with its frame flags, in order."""
    bodies: dict[bytes, tuple[Flags, list[bytes]]] = {}
    for send in sent:
        frame, message = decode_message(send.frame)
        if isinstance(message, MemorySync) and (message.kind, message.tier) == (
            SyncKind.STEP2,
            tier,
        ):
            key = message.chunk.transfer_id if message.chunk else message.batch_id
            bodies.setdefault(key, (frame.flags, []))[1].append(message.body)
    return [(flags, b"".join(pieces)) for flags, pieces in bodies.values()]


def test_big_initial_sync_goes_out_as_bounded_slices_each_applicable_alone(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3, step2_batch_bytes=SLICE)
    in_flight_max, acked, progress = 0, 0, []
    while net.queue:
        node_id, event = net.step()
        if node_id == "a" and isinstance(event, FrameReceived):
            acked += isinstance(decode_message(event.data)[1], SyncAck)
        asked = sum(
            1 for flags, _b in step2_slices(net.sent_since(0, src="a"))
            if flags & Flags.REQUIRES_ACK
        )  # fmt: skip
        in_flight_max = max(in_flight_max, asked - acked)
        progress.extend(b.transfers())
    slices = step2_slices(net.sent_since(0, src="a"))
    assert len(slices) > 4
    assert all(len(body) <= SLICE + 4_096 for _flags, body in slices)
    assert [bool(f & Flags.REQUIRES_ACK) for f, _b in slices] == [True] * (len(slices) - 1) + [
        False
    ]
    assert 0 < in_flight_max <= a.config.step2_window
    # Each slice, applied in order to an empty replica, integrates at once.
    fresh = make_node("c", NodeConfig.lan(**QUIET))
    counts = []
    for _flags, body in slices:
        fresh.memory.apply_remote("L3", body, 1_000)
        assert fresh.memory.tier_doc("L3").held_updates == 0
        counts.append(fresh.memory.count("L3"))
    assert counts == sorted(counts) and 0 < counts[0] < counts[-2] and counts[-1] == 2_000
    assert roots(a) == roots(b) and b.memory.count("L3") == 2_000
    assert progress and {(p.peer_id, p.tier, p.items_total) for p in progress} == {
        ("a", "L3", 2_000)
    }
    items_done = [p.items_done for p in progress]
    assert items_done == sorted(items_done) and 0 < max(items_done) < 2_000
    assert all(p.bytes_done <= p.bytes_total for p in progress)
    assert b.transfers() == []


def sync_logs(effects: Iterable[Effect]) -> list[tuple[str, dict[str, object]]]:
    return [(e.message, e.fields) for e in effects if isinstance(e, Log) and "sync" in e.message]


def test_a_big_initial_sync_is_logged_by_tenths_then_done(big_l3: list[NewItem]) -> None:
    net, _a, _b = start_big_sync(big_l3, step2_batch_bytes=SLICE)
    net.settle()
    logged = sync_logs(net.log["b"])
    progress = [fields for message, fields in logged if message == "initial sync in progress"]
    assert progress and all(f["peer"] == "a" and f["tier"] == "L3" for f in progress)
    done = [int(str(f["items"]).split("/")[0]) for f in progress]
    assert done == sorted(done) and len(set(done)) == len(done) and len(done) <= 10
    assert all(str(f["items"]).endswith("/2000") for f in progress)
    assert logged[-1] == ("initial sync done", {"peer": "a", "tier": "L3", "items": "2000"})


def test_a_small_sync_logs_the_items_it_brought_and_an_idle_one_logs_nothing() -> None:
    config = NodeConfig.lan(**QUIET)
    a, b = make_node("a", config), make_node("b", config)
    a.memory.put_many(new_items("s", 3), 1_000)
    net = Net(a, b)
    net.link("a", "b")
    assert ("synced", {"peer": "a", "tier": "L1", "items": "3"}) in sync_logs(net.log["b"])
    mark = len(net.log["b"])
    net.link("a", "b")  # a second exchange brings nothing new
    assert sync_logs(net.log["b"][mark:]) == []


def test_interrupted_sliced_sync_keeps_what_arrived_and_sends_only_the_rest(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3, step2_batch_bytes=SLICE)
    while b.memory.count("L3") < 600:
        net.step()
    net.queue.clear()
    net.do("a", LinkDown("b"))
    net.do("b", LinkDown("a"))
    arrived = b.memory.count("L3")
    assert 600 <= arrived < 2_000
    # What arrived is persisted: a replica rebuilt from b's Persist effects holds it all.
    rebuilt = make_node("c", NodeConfig.lan(**QUIET))
    for effect in net.log["b"]:
        if isinstance(effect, Persist):
            for tier, update in effect.change.updates:
                rebuilt.memory.apply_remote(tier, update, 1_000)
    assert rebuilt.memory.count("L3") == arrived
    whole = len(a.memory.tier_doc("L3").encode_diff())
    net.now += a.config.step1_guard_s + 1.0
    mark = len(net.sent)
    net.link("a", "b")
    rest = sum(len(body) for _f, body in step2_slices(net.sent_since(mark, src="a")))
    assert 0 < rest < whole * (2_000 - arrived) / 2_000 + SLICE
    assert b.memory.count("L3") == 2_000 and roots(a) == roots(b)
    assert b.transfers() == []


def test_a_digest_does_not_restart_a_sliced_sync_in_progress(big_l3: list[NewItem]) -> None:
    net, a, b = start_big_sync(big_l3, step2_batch_bytes=SLICE)
    while b.memory.count("L3") < 300:
        net.step()
    roots_of_a = tuple((t, a.memory.digest(t).root()) for t in a.config.tiers)
    effects = net.do("b", FrameReceived("a", encode_message(Digest(roots_of_a))))
    assert syncs(effects, SyncKind.STEP1) == []
    net.settle()
    assert roots(a) == roots(b)


def test_exchanges_during_a_sliced_sync_do_not_send_its_slices_again(
    big_l3: list[NewItem],
) -> None:
    net, a, b = start_big_sync(big_l3, step2_batch_bytes=SLICE)
    while b.memory.count("L3") < 300:
        net.step()
    net.now += a.config.step1_guard_s + 1.0  # past the guard: a pull would be due
    step1 = MemorySync(b"\x05" * 16, "b", "a", "L3", SyncKind.STEP1, b.memory.tier_doc(
        "L3").state_vector())  # fmt: skip
    assert syncs(net.do("a", FrameReceived("b", encode_message(step1)))) == []
    # b's digest makes a ask b for what it lacks; b answers without pulling again.
    roots_of_b = tuple((t, b.memory.digest(t).root()) for t in b.config.tiers)
    asked = syncs(net.do("a", FrameReceived("b", encode_message(Digest(roots_of_b)))))
    assert [m.kind for m in asked] == [SyncKind.STEP1]
    answer = net.do("b", FrameReceived("a", encode_message(asked[0])))
    assert [m.kind for m in syncs(answer)] == [SyncKind.STEP2]
    net.settle()
    sent = sum(len(body) for _f, body in step2_slices(net.sent_since(0, src="a")))
    assert sent < len(a.memory.tier_doc("L3").encode_diff()) + SLICE
    assert roots(a) == roots(b)


def test_resume_of_an_unknown_transfer_restarts_with_step1() -> None:
    net, (_a, _b) = linked("a", "b")
    frame = encode_message(Resume(b"\x07" * 16, 5))
    effects = net.do("a", FrameReceived("b", frame))
    assert [m.tier for m in syncs(effects, SyncKind.STEP1)] == list(TIERS)


# ----------------------------------------------------------------- queries


@pytest.fixture
def query_pair() -> tuple[Net, Node, Node]:
    """q replicates only L1; p replicates every tier and holds L3 facts and an L2 episode."""
    q = make_node("q", NodeConfig.lan(tiers=("L1",), **QUIET))
    p = make_node("p", NodeConfig.lan(**QUIET))
    facts = [NewItem("L3", f"fact {i}", f"f{i}", embedding=vector(i, 64)) for i in range(20)]
    p.memory.put_many([*facts, NewItem("L2", "an episode", "e1")], 1_000)
    net = Net(q, p)
    net.link("q", "p")
    assert "f3" not in q.memory and q.memory.count("L3") == 0  # L3 is not replicated to q
    return net, q, p


def answers(net: Net, node_id: str) -> list[QueryAnswered]:
    return [e for e in net.log[node_id] if isinstance(e, QueryAnswered)]


def test_query_by_vector_searches_a_tier_of_the_peer(query_pair: tuple[Net, Node, Node]) -> None:
    net, _q, _p = query_pair
    probe = vector(3, 64) + 0.05 * vector(99, 64)
    net.do("q", QueryRequested(7, "p", "L3", vector=tuple(float(x) for x in probe), k=3))
    net.settle()
    (answer,) = answers(net, "q")
    assert (answer.request_id, answer.ok) == (7, True)
    result = answer.result
    assert isinstance(result, MemoryResponse)
    assert len(result.hits) == 3 and result.hits[0][0] == "f3"
    scores = [score for _id, score in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert [item_id for item_id, _record in result.records] == [h for h, _s in result.hits]
    assert "fact 3" in dict(result.records)["f3"]


def test_query_by_ids_fetches_records_of_that_tier_only(
    query_pair: tuple[Net, Node, Node],
) -> None:
    net, _q, _p = query_pair
    net.do("q", QueryRequested(8, "p", "L3", ids=("f1", "f2", "e1", "missing")))
    net.settle()
    (answer,) = answers(net, "q")
    assert (answer.request_id, answer.ok) == (8, True)
    assert [i for i, _r in answer.result.records] == ["f1", "f2"]
    assert answer.result.hits == ()


def test_query_of_a_tier_the_peer_does_not_replicate_fails(
    query_pair: tuple[Net, Node, Node],
) -> None:
    net, _q, _p = query_pair
    net.do("p", QueryRequested(9, "q", "L3", ids=("f1",)))
    net.settle()
    (answer,) = answers(net, "p")
    assert (answer.request_id, answer.ok) == (9, False)
    assert "not replicated" in answer.error


def test_query_to_a_silent_peer_fails_at_its_timeout(
    query_pair: tuple[Net, Node, Node],
) -> None:
    net, q, _p = query_pair
    net.muted.add("p")
    net.now = 1.0
    effects = net.do("q", QueryRequested(10, "p", "L3", ids=("f1",), timeout_s=2.0))
    (query,) = [m for s in sends(effects) if isinstance(m := message_of(s), MemoryQuery)]
    deadline = q.next_deadline()
    assert deadline is not None and deadline <= 3.0
    net.now = 2.99
    net.do("q", Tick())
    assert answers(net, "q") == []
    net.now = 3.0
    net.do("q", Tick())
    assert [(a.request_id, a.ok) for a in answers(net, "q")] == [(10, False)]
    assert "timed out" in answers(net, "q")[0].error
    late = encode_message(MemoryResponse(query.query_id, True, (), ()))
    assert q.handle(FrameReceived("p", late), 3.1) == []  # a late answer is ignored


# ----------------------------------------------------------------- imports


def export_from(node_id: str, items: list[NewItem], *, base: bytes = b"") -> bytes:
    """Return an L1 export (a whole-tier Yjs update) of a node that holds `base` and `items`."""
    source = make_node(node_id)
    if base:
        source.memory.apply_remote("L1", base, 1_000)
    source.memory.put_many(items, 2_000)
    return source.memory.tier_doc("L1").encode_diff()


def test_an_import_reaches_peers_at_the_next_flush_without_any_digest() -> None:
    config = NodeConfig.lan(sync_interval_s=0.5, **QUIET)
    net, (a, b) = linked("a", "b", config=config)
    mark = len(net.sent)
    export = export_from("c", new_items("imported", 3))
    effects = net.do("a", ImportRequested(1, "L1", export))
    assert_persist_first(effects)
    (acked,) = [e for e in effects if isinstance(e, WriteAcked)]
    assert acked.changed_ids == ("imported-0", "imported-1", "imported-2")
    assert not sends(effects)  # NORMAL: it waits in the outbox like a NORMAL write
    net.advance(0.49)
    assert "imported-0" not in b.memory
    net.advance(0.5)
    updates = syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)
    assert [(m.tier, m.target) for m in updates] == [("L1", "*")]
    assert all(f"imported-{i}" in b.memory for i in range(3))
    assert roots(a) == roots(b)
    assert a.counters.digests_sent == b.counters.digests_sent == 0


@pytest.mark.parametrize("priority", [Priority.CRITICAL, Priority.EMERGENCY])
def test_an_urgent_import_is_flooded_at_once_after_its_persist(priority: Priority) -> None:
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(sync_interval_s=0.5, **QUIET))
    export = export_from("c", new_items("urgent", 1))
    effects = net.do("a", ImportRequested(1, "L1", export, priority))
    assert_persist_first(effects)
    (update,) = syncs(effects, SyncKind.UPDATE)
    assert [s.priority for s in sends(effects)] == [priority]
    assert update.tier == "L1"
    net.settle()
    assert "urgent-0" in b.memory


def test_an_import_sends_only_what_it_added_here() -> None:
    net, (a, b) = linked("a", "b", config=NodeConfig.lan(sync_interval_s=0.5, **QUIET))
    net.do("a", WriteRequested(1, puts=new_items("known", 200)))
    net.advance(1.0)
    assert "known-199" in b.memory
    # Another node's export holds everything a has, and one item more.
    export = export_from(
        "c", [NewItem("L1", "new", "new")], base=a.memory.tier_doc("L1").encode_diff()
    )
    mark = len(net.sent)
    effects = net.do("a", ImportRequested(2, "L1", export))
    assert [e.changed_ids for e in effects if isinstance(e, WriteAcked)] == [("new",)]
    net.advance(2.0)
    (update,) = syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)
    assert len(update.body) * 20 < len(export)
    assert "new" in b.memory and roots(a) == roots(b)


def test_an_import_of_nothing_new_is_acked_and_sends_nothing() -> None:
    net, (a, _b) = linked("a", "b", config=NodeConfig.lan(sync_interval_s=0.5, **QUIET))
    net.do("a", WriteRequested(1, puts=new_items("known", 2)))
    net.advance(1.0)
    mark = len(net.sent)
    effects = net.do("a", ImportRequested(2, "L1", a.memory.tier_doc("L1").encode_diff()))
    assert [e.changed_ids for e in effects if isinstance(e, WriteAcked)] == [()]
    net.advance(2.0)
    assert not syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)


def test_an_invalid_import_is_refused_and_changes_nothing() -> None:
    net, (a, _b) = linked("a", "b", config=NodeConfig.lan(sync_interval_s=0.5, **QUIET))
    before = roots(a)
    mark = len(net.sent)
    effects = net.do("a", ImportRequested(1, "L1", b"\xff\x00garbage\x13\x37"))
    assert len(effects) == 1 and isinstance(effects[0], WriteFailed)
    assert effects[0].request_id == 1 and effects[0].applied is False
    net.advance(2.0)
    assert roots(a) == before
    assert not syncs(net.sent_since(mark, src="a"), SyncKind.UPDATE)


# ----------------------------------------------------------------- anti-entropy


def unlinked_pair() -> tuple[Net, Node, Node]:
    """Two nodes that know each other and can exchange frames, but whose links fail."""
    config = NodeConfig.lan(anti_entropy_interval_s=1.0)
    a, b = make_node("a", config), make_node("b", config)
    net = Net(a, b)
    net.unlinkable.add(frozenset("ab"))
    net.do("a", PeerFound("b"))
    net.do("b", PeerFound("a"))
    net.settle()
    assert a.links == b.links == frozenset()
    return net, a, b


def test_anti_entropy_with_equal_content_sends_only_digests() -> None:
    net, a, b = unlinked_pair()
    items = [NewItem("L1", "same", "s1"), NewItem("L3", "same fact", "s3")]
    change = a.memory.put_many(items, 1_000)
    for tier, update in change.updates:
        b.memory.apply_remote(tier, update, 1_000)
    assert roots(a) == roots(b)
    net.advance(5.0)
    kinds = [type(message_of(s)) for _n, s in net.sent]
    assert kinds.count(Digest) >= 4
    assert a.counters.digests_sent >= 2 and b.counters.digests_sent >= 2
    assert MemorySync not in kinds
    assert a.links == b.links == frozenset()


def test_anti_entropy_with_different_content_converges() -> None:
    net, a, b = unlinked_pair()
    a.memory.put_many([NewItem("L1", "only a", "a1"), NewItem("L2", "only a", "a2")], 1_000)
    b.memory.put(NewItem("L3", "only b", "b3"), 1_000)
    net.advance(5.0)
    assert a.links == b.links == frozenset()
    assert roots(a) == roots(b)
    assert all(i in n.memory for i in ("a1", "a2", "b3") for n in (a, b))
    kinds = {m.kind for m in syncs(s for _n, s in net.sent)}
    assert kinds == {SyncKind.STEP1, SyncKind.STEP2}


# ----------------------------------------------------------------- timers


def test_next_deadline_is_never_in_the_past_and_ticks_make_progress() -> None:
    config = NodeConfig.lan(sync_interval_s=0.2)
    nodes = [make_node(i, config) for i in ("a", "b", "c")]
    net = Net(*nodes)
    net.check_deadlines = True
    for n in ("a", "b", "c"):
        for m in ("a", "b", "c", "ghost"):  # ghost: discovered, but never reachable
            if m != n:
                net.do(n, PeerFound(m))
    net.settle()
    net.advance(1.0)
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.ALL))
    net.do("b", QueryRequested(2, "c", "L1", ids=("x",), timeout_s=1.0))
    net.advance(3.0)
    net.muted.add("c")
    net.do("b", QueryRequested(3, "c", "L1", ids=("x",), timeout_s=1.0))
    net.advance(20.0)
    a = nodes[0]
    assert a.membership.state_of("ghost") is MemberState.DEAD
    assert a.membership.state_of("c") is MemberState.DEAD
    assert [type(e) for e in net.log["a"] if isinstance(e, WriteAcked | WriteFailed)] == [
        WriteAcked
    ]
    assert [(x.request_id, x.ok) for x in answers(net, "b")] == [(2, True), (3, False)]
    assert "x" in nodes[1].memory


def test_failed_connect_to_a_peer_no_longer_wanted_does_not_pin_the_deadline() -> None:
    """Regression: the retry entry of a peer that is no longer wanted kept next_deadline in
    the past, so a driver that ticks at next_deadline spun forever at one instant."""
    config = NodeConfig.lan(full_mesh_max=1, random_links=1)  # a partial mesh from 2 peers
    a, b, c = (make_node(i, config) for i in ("a", "b", "c"))
    net = Net(a, b, c)
    net.check_deadlines = True  # every Tick must move next_deadline forward
    effects = net.do("a", PeerFound("ghost"))  # discovered, never reachable
    assert Connect("ghost") in effects
    net.settle()  # the connect fails: a retry is scheduled
    assert "ghost" in a._retry_at
    net.do("a", PeerFound("b"))
    net.settle()
    assert a.links == {"b"}  # from now on a wants b only, not ghost
    net.do("a", PeerFound("c"))
    net.settle()
    net.advance(30.0)
    assert a.membership.state_of("ghost") is MemberState.DEAD
    assert a.membership.state_of("b") is MemberState.ALIVE


def acks_sent(net: Net, mark: int) -> list[tuple[str, str]]:
    """(acker, to) of every SYNC_ACK sent since `mark`."""
    return [(src, s.peer_id) for src, s in net.sent[mark:] if isinstance(message_of(s), SyncAck)]


def test_peer_ack_is_answered_by_the_origins_links_not_by_the_whole_flood() -> None:
    net, _a, _b, c = line()  # c gets a's batch through b; one ack is all `peer` needs
    mark = len(net.sent)
    write = WriteRequested(
        1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.PEER, priority=Priority.CRITICAL
    )
    net.do("a", write)
    net.settle()
    assert "x" in c.memory
    assert acks_sent(net, mark) == [("b", "a")]
    done = [e for e in net.log["a"] if isinstance(e, WriteAcked)]
    assert [(e.request_id, e.acked_by) for e in done] == [(1, ("b",))]


def test_all_ack_is_answered_by_every_receiver_of_the_flood() -> None:
    net, _a, _b, _c = line()
    mark = len(net.sent)
    write = WriteRequested(
        1, puts=[NewItem("L1", "v", "x")], ack=AckLevel.ALL, priority=Priority.CRITICAL
    )
    frame = sends(net.do("a", write))[0].frame
    assert decode_message(frame)[0].flags & Flags.ACK_ALL
    net.settle()
    assert sorted(acks_sent(net, mark)) == [("b", "a"), ("c", "a")]


def test_swim_ping_to_an_unlinked_dead_member_also_dials_it() -> None:
    """Above full_mesh_max dead members are not among the wanted links, and a transport
    speaks only over links: without the dial, the sides of a healed partition stay apart."""
    a = make_node("a", NodeConfig.sim(**QUIET))
    peers = [f"p{i:02d}" for i in range(30)]
    for peer in peers:
        a.handle(PeerFound(peer), 0.0)
    a.membership.apply_gossip([MemberUpdate("p25", MemberState.DEAD, 0)], 0.0)
    a.handle(Tick(), 0.0)
    assert "p25" not in a.links
    dialled, pinged = [], []
    now = 0.0
    # Nobody answers here, so members die one by one; stop before the mesh is small
    # enough (full_mesh_max) for every dead member to be dialled anyway.
    while not dialled:
        now += 0.5
        effects = a.handle(Tick(), now)
        if a.membership.alive_count() <= a.config.full_mesh_max:
            break
        pinged += [s for s in sends(effects) if s.peer_id == "p25"]
        dialled += [e for e in effects if isinstance(e, Connect) and e.peer_id == "p25"]
    assert pinged and dialled  # SWIM's probe of the dead member, and a link to carry it
    connects = [e for e in a.handle(Tick(), now + 0.1) if isinstance(e, Connect)]
    assert Connect("p25") not in connects  # one attempt at a time


def test_an_accusation_at_the_largest_incarnation_does_not_break_the_node() -> None:
    node = make_node("victim")
    node.handle(LinkUp("evil"), 0.0)
    node.handle(LinkUp("honest"), 0.0)
    accusation = MemberUpdate("victim", MemberState.SUSPECT, 2**64 - 1, "")
    node.handle(FrameReceived("evil", encode_message(Ping(1, (accusation,)))), 0.1)
    assert node.membership.incarnation == 2**64 - 1  # saturated, still encodable
    now = 0.2
    for _ in range(40):  # its pings and acks still encode (they raised before)
        for send in sends(node.handle(Tick(), now)):
            message_of(send)
        now += 0.1


def test_progress_of_evicted_transfers_is_forgotten() -> None:
    node = make_node("victim")
    node.handle(LinkUp("evil"), 0.0)
    rng = random.Random(1)
    for i in range(600):  # each opens a new two-piece transfer and never finishes it
        transfer = rng.randbytes(16)
        message = MemorySync(
            transfer, f"src{i}", "*", "L1", SyncKind.UPDATE, b"x", 1, Chunk(transfer, 0, 2, 2)
        )
        frame = encode_message(message, flags=Flags.CHUNKED)
        node.handle(FrameReceived("evil", frame), 1.0 + i * 1e-4)
    assert len(node._reassembler) == DEFAULT_MAX_TRANSFERS  # the rest were evicted
    assert len(node._incoming) == len(node.transfers()) == DEFAULT_MAX_TRANSFERS


def test_an_update_whose_predecessor_nobody_has_does_not_start_a_sync_loop() -> None:
    """Regression: held forever, it kept needs_sync true, and every STEP2 drew a STEP1."""
    forger = Doc(client_id=999)
    items = forger.get("items", type=Map)
    with forger.transaction():
        items["pre/w"] = "never sent"
    seen = bytes(forger.get_state())
    with forger.transaction():
        items["gap/w"] = "held for good"
    update = bytes(forger.get_update(seen))  # starts at clock 1: clock 0 exists nowhere
    net, (a, b) = linked("a", "b")
    mark = len(net.sent)
    sync = MemorySync(bytes(16), "evil", "*", "L1", SyncKind.UPDATE, update, 1)
    net.queue.append(("a", FrameReceived("evil", encode_message(sync, flags=Flags.BATCHED))))
    net.settle(limit=100)
    assert len(net.sent_since(mark)) < 10
    assert a.memory.tier_doc("L1").held_updates == b.memory.tier_doc("L1").held_updates == 1


def test_a_resumed_transfer_that_progressed_is_resumed_again_after_another_flap(
    big_l3: list[NewItem],
) -> None:
    """Found in review: a transfer resumed once was dropped at the next link-up even when
    pieces had arrived since; on a link that drops twice all progress was lost."""
    net, a, b = start_big_sync(big_l3)
    interrupt_after(net, 3)
    net.now += 0.5
    net.do("a", LinkUp("b"))
    net.do("b", LinkUp("a"))
    interrupt_after(net, 2)  # the resume delivers two more pieces, then the link drops
    mark = len(net.sent)
    net.now += 0.5
    net.link("a", "b")
    resumes = [m for s in net.sent_since(mark, src="b") if isinstance(m := message_of(s), Resume)]
    assert [r.next_index for r in resumes] == [5]  # resumed from where it got to
    assert b.memory.count("L3") == 2_000 and roots(a) == roots(b)


def test_held_batches_the_tier_drops_are_forgotten_and_new_holds_are_still_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: at the tier's byte bound a new hold drops the oldest, so the held
    count did not grow: the new batch was never recorded (never acked), and the dropped
    ones stayed recorded with their bodies."""
    monkeypatch.setattr(tier_module, "MAX_HELD_BYTES", 500_000)
    net, (_a, b) = linked("a", "b", config=NodeConfig.lan(**QUIET))
    source = Doc(client_id=1000)
    items = source.get("items", type=Map)
    items["lost/a"] = "x"
    lost = source.get_update()
    state = source.get_state()
    updates = []
    for i in range(4):  # about 200 KB each: the third and fourth holds drop the oldest
        items[f"k{i}/a"] = bytes(range(256)).hex() * 400
        updates.append(source.get_update(state))
        state = source.get_state()

    def deliver(update: bytes) -> list[Effect]:
        message = MemorySync(random.randbytes(16), "a", "*", "L1", SyncKind.UPDATE, update, 1)
        frame = encode_message(message, flags=Flags.BATCHED | Flags.REQUIRES_ACK)
        net.now += 0.001
        return b.handle(FrameReceived("a", frame), net.now)

    for update in updates:
        deliver(update)
    doc = b.memory.tier_doc("L1")
    assert doc.held_updates == 2 and doc.gaps_dropped == 2
    assert len(b._held_batches) == 2  # the two the tier still holds, the newest included
    acked = [
        message_of(s)
        for update in (lost, *updates[:2])
        for s in sends(deliver(update))
        if isinstance(message_of(s), SyncAck)
    ]
    assert doc.held_updates == 0 and len(acked) == 5  # 3 delivered now, 2 released
    assert len(b._held_batches) == 0
