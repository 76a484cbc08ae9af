"""MEMORY_QUERY answers stay within one frame; driven by hand (sans-IO, no event loop).

Suspected in review, reproduced here: a query whose matching records were large (ids plus
k hits) made the answerer's encode raise "frame over the cap" while it handled the query,
so it counted the honest querier's frame as bad (20 of them disconnect it) and the querier
got no answer until its timeout; under a mesh frame cap below the default, the answer was
sent and the querier counted it as a bad frame of the honest answerer. Repeated ids were
each answered (one 1 MiB item named 10,000 times: gigabytes of records), and a local
query with too many ids raised out of `Node.handle`.
"""

from __future__ import annotations

import base64
import random

import msgpack
import pytest

from crdt.item import to_record
from crdt.memory import NewItem
from mesh.codec import MAX_QUERY_IDS, decode_message, encode_message
from mesh.config import NodeConfig
from mesh.effects import Disconnect, QueryAnswered, Send
from mesh.frames import DEFAULT_LIMITS, Frame, FrameError, Limits, MsgType, encode_frame
from mesh.inputs import FrameReceived, QueryRequested
from mesh.messages import MemoryQuery, MemoryResponse
from mesh.node import MAX_QUERY_K, Node
from tests.unit.test_node import QUIET, Net, make_node, vector

CAP = DEFAULT_LIMITS.max_frame_bytes
DIM = 4096


def noise(seed: int, size: int) -> str:
    """Text that does not compress much (so records stay large on the wire)."""
    raw = random.Random(seed).randbytes(size * 3 // 4)
    return base64.b64encode(raw).decode()


def big_fact(i: int, size: int = 60_000) -> NewItem:
    """An L3 item with incompressible content and a full-size embedding."""
    return NewItem("L3", noise(i, size), f"big{i}", embedding=vector(i, DIM))


def pair(items: list[NewItem], limits: Limits = DEFAULT_LIMITS) -> tuple[Net, Node, Node]:
    """q replicates only L1 (so it must query); p holds `items` in L3."""
    q = make_node("q", NodeConfig.lan(tiers=("L1",), limits=limits, **QUIET))
    p = make_node("p", NodeConfig.lan(limits=limits, **QUIET))
    p.memory.put_many(items, 1_000)
    net = Net(q, p)
    net.link("q", "p")
    return net, q, p


def answers(net: Net, node_id: str) -> list[QueryAnswered]:
    return [e for e in net.log[node_id] if isinstance(e, QueryAnswered)]


def responses(net: Net, src: str) -> list[tuple[Send, MemoryResponse]]:
    out = []
    for node_id, send in net.sent:
        if node_id == src:
            message = decode_message(send.frame)[1]
            if isinstance(message, MemoryResponse):
                out.append((send, message))
    return out


def assert_nobody_penalised(net: Net) -> None:
    for node_id, node in net.nodes.items():
        assert node.counters.bad_frames == 0, (node_id, node.counters.bad_frames_by_peer)
        assert not any(isinstance(e, Disconnect) for e in net.log[node_id])


def test_a_query_whose_records_exceed_one_frame_gets_a_partial_answer_within_the_cap() -> None:
    items = [big_fact(i) for i in range(12)]  # ~12 x 66 KB of records
    net, _q, p = pair(items)
    ids = tuple(f"big{i}" for i in range(12))
    probe = tuple(float(x) for x in vector(3, DIM))
    net.do("q", QueryRequested(1, "p", "L3", vector=probe, k=MAX_QUERY_K, ids=ids))
    net.settle()
    (answer,) = answers(net, "q")
    assert answer.ok
    result = answer.result
    assert isinstance(result, MemoryResponse) and result.partial
    assert answer.error == result.error and "left out" in result.error
    # Records follow the query's order (ids first), each id at most once, each exact.
    got = [i for i, _r in result.records]
    assert got and len(got) < len(ids) and len(set(got)) == len(got)
    assert got == [i for i in ids if i in got]
    for item_id, record in result.records:
        assert record == to_record(p.memory.get(item_id))
    assert len(result.hits) == len(items) and result.hits[0][0] == "big3"
    ((send, _message),) = responses(net, "p")
    assert len(send.frame) <= CAP
    assert_nobody_penalised(net)


def test_the_answer_fits_the_configured_frame_cap_of_the_mesh() -> None:
    limits = Limits(max_frame_bytes=64 * 1024)
    # ~150 KB of records: under the default cap, over this mesh's.
    net, _q, _p = pair([big_fact(i, size=20_000) for i in range(6)], limits)
    net.do("q", QueryRequested(1, "p", "L3", ids=tuple(f"big{i}" for i in range(6))))
    net.settle()
    (answer,) = answers(net, "q")
    assert answer.ok and answer.result.partial and 1 <= len(answer.result.records) < 6
    ((send, _message),) = responses(net, "p")
    assert len(send.frame) <= limits.max_frame_bytes
    assert_nobody_penalised(net)


def test_asking_again_for_what_was_left_out_gets_the_rest() -> None:
    items = [big_fact(i) for i in range(12)]
    net, _q, _p = pair(items)
    wanted = [f"big{i}" for i in range(12)]
    fetched: list[str] = []
    for request_id in range(1, 10):
        rest = tuple(i for i in wanted if i not in fetched)
        if not rest:
            break
        net.do("q", QueryRequested(request_id, "p", "L3", ids=rest))
        net.settle()
        answer = answers(net, "q")[-1]
        assert answer.request_id == request_id and answer.ok
        fetched += [i for i, _r in answer.result.records]
        assert answer.result.partial == (len(fetched) < len(wanted))
    assert sorted(fetched) == sorted(wanted)
    assert_nobody_penalised(net)


def test_a_record_larger_than_a_frame_is_left_out_and_the_others_are_sent() -> None:
    items = [big_fact(0, size=400_000), big_fact(1, size=1_000)]
    net, _q, _p = pair(items)
    net.do("q", QueryRequested(1, "p", "L3", ids=("big0", "big1")))
    net.settle()
    (answer,) = answers(net, "q")
    assert answer.ok and answer.result.partial
    assert [i for i, _r in answer.result.records] == ["big1"]
    assert_nobody_penalised(net)


def test_a_small_query_is_whole_and_not_marked_partial() -> None:
    net, _q, _p = pair([big_fact(i, size=1_000) for i in range(3)])
    net.do("q", QueryRequested(1, "p", "L3", ids=("big0", "big1", "big2")))
    net.settle()
    (answer,) = answers(net, "q")
    assert answer.ok and not answer.result.partial and answer.error == ""
    assert [i for i, _r in answer.result.records] == ["big0", "big1", "big2"]


def test_repeated_ids_are_answered_once() -> None:
    net, _q, _p = pair([big_fact(0, size=30_000)])
    net.do("q", QueryRequested(1, "p", "L3", ids=("big0",) * MAX_QUERY_IDS))
    net.settle()
    (answer,) = answers(net, "q")
    assert answer.ok and not answer.result.partial
    assert [i for i, _r in answer.result.records] == ["big0"]
    assert_nobody_penalised(net)


def test_a_query_over_the_id_cap_fails_locally_and_sends_nothing() -> None:
    net, _q, _p = pair([])
    ids = tuple(f"id{i}" for i in range(MAX_QUERY_IDS + 1))
    effects = net.do("q", QueryRequested(1, "p", "L3", ids=ids))
    assert not any(isinstance(e, Send) for e in effects)
    (answer,) = answers(net, "q")
    assert not answer.ok and "ids" in answer.error


def test_the_wire_refuses_a_query_over_the_id_cap() -> None:
    ids = tuple(f"id{i}" for i in range(MAX_QUERY_IDS))
    frame = encode_message(MemoryQuery(1, "L3", b"", 10, ids))
    assert decode_message(frame)[1] == MemoryQuery(1, "L3", b"", 10, ids)
    with pytest.raises(FrameError):
        encode_message(MemoryQuery(1, "L3", b"", 10, (*ids, "one-more")))


def test_a_raw_query_over_the_id_cap_is_a_bad_frame_of_its_sender() -> None:
    net, _q, p = pair([])
    # Packed by hand, past the encoder's check, as a peer running other code could send it.
    ids = [f"id{i}" for i in range(MAX_QUERY_IDS + 1)]
    payload = msgpack.packb([int(MsgType.MEMORY_QUERY), 1, "L3", b"", 10, ids])
    frame = encode_frame(Frame(MsgType.MEMORY_QUERY, payload, batch_count=len(ids)))
    effects = p.handle(FrameReceived("q", frame), net.now)
    assert not any(isinstance(e, Send) for e in effects)
    assert p.counters.bad_frames_by_peer == {"q": 1}
