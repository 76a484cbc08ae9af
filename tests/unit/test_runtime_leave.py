"""Closing the runtime tells linked peers the node LEFT, so they need not time it out."""

from __future__ import annotations

import random
from pathlib import Path

from lone_node import RecordingTransport

from mesh.api import Mesh
from mesh.codec import decode_message
from mesh.config import NodeConfig
from mesh.messages import MemberState, Ping
from mesh.node import Node
from mesh.runtime import NodeRuntime


def goodbyes(sent: list[tuple[str, bytes]], node_id: str) -> set[str]:
    """Return the peers sent a PING whose gossip says `node_id` LEFT."""
    told = set()
    for peer, frame in sent:
        message = decode_message(frame)[1]
        if isinstance(message, Ping) and any(
            u.node_id == node_id and u.state is MemberState.LEFT for u in message.gossip
        ):
            told.add(peer)
    return told


async def test_close_says_goodbye_to_every_linked_peer_once(tmp_path: Path) -> None:
    transport = RecordingTransport()
    async with Mesh.open(tmp_path) as mesh:
        node = Node(mesh.memory, NodeConfig.lan(), random.Random(1))
        runtime = NodeRuntime(node, mesh._running(), transport)
        await runtime.start()
        for peer in ("peer-b", "peer-c"):
            runtime.peer_found(peer, "10.0.0.9", 7600, ("L1", "L2", "L3"))
            runtime.link_up(peer, "10.0.0.9")
        assert goodbyes(transport.sent, node.node_id) == set()
        await runtime.close()
        await runtime.close()  # closing again says nothing more
    assert goodbyes(transport.sent, node.node_id) == {"peer-b", "peer-c"}
    assert node.membership.left
