"""The structured `put` control request: fields checked first, then `Mesh.put`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh import control_ops
from mesh.api import Mesh
from mesh.control import ControlClient, ControlError
from mesh.daemon import Daemon, DaemonOptions
from mesh.joining import init_node


async def test_put_stores_the_item_and_returns_it_without_the_vector(tmp_path: Path) -> None:
    request = {
        "op": "put", "tier": "L3", "content": "the sky is blue", "id": "fact-1",
        "embedding": [0.5, -0.25, 1.0], "metadata": {"source": "test"}, "tags": ["a", "b"],
        "confidence": 0.75, "priority": "CRITICAL",
    }  # fmt: skip
    async with Mesh.open(tmp_path) as mesh:
        result = await control_ops.put(mesh, request)
        stored = await mesh.get("fact-1")
    assert result["id"] == "fact-1" and result["tier"] == "L3"
    assert result["embedding_dim"] == 3 and "embedding" not in result
    assert stored.content == "the sky is blue" and stored.tags == ("a", "b")
    assert dict(stored.metadata) == {"source": "test"} and stored.confidence == 0.75
    assert stored.embedding is not None
    np.testing.assert_allclose(stored.embedding, [0.5, -0.25, 1.0], atol=0.02)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"content": "no tier"}, "needs tier and content"),
        ({"tier": "L1", "content": 7}, "content must be a string"),
        ({"tier": "L1", "content": "x", "tags": "a,b"}, "tags must be a list"),
        ({"tier": "L1", "content": "x", "tags": ["a", 1]}, "list of strings"),
        ({"tier": "L1", "content": "x", "confidence": True}, "confidence must be a number"),
        ({"tier": "L1", "content": "x", "metadata": [1]}, "metadata must be a JSON object"),
        ({"tier": "L1", "content": "x", "priority": "urgent"}, "priority must be one of"),
        ({"tier": "L1", "content": "x", "ack": "never"}, "ack must be one of"),
        ({"tier": "L1", "content": "x", "colour": "red"}, "unknown field(s) colour"),
    ],
)
async def test_a_bad_field_is_refused_and_nothing_is_stored(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    async with Mesh.open(tmp_path) as mesh:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await control_ops.put(mesh, {"op": "put", "id": "refused", **fields})
        assert mesh.memory.count("L1") == 0


async def test_a_kept_open_client_sends_many_requests_and_sees_refusals(tmp_path: Path) -> None:
    init_node(tmp_path)

    def session() -> list[str]:
        with ControlClient(tmp_path, timeout=10.0) as client:
            ids = [client.put("L1", f"note {i}", priority="critical")["id"] for i in range(5)]
            with pytest.raises(ControlError, match="unknown field"):
                client.put("L1", "x", colour="red")
            assert client.call("status")["tiers"]["L1"]["items"] == 5  # still usable
            return ids

    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        ids = await asyncio.to_thread(session)
        assert daemon.mesh is not None
        assert [(await daemon.mesh.get(i)).content for i in ids] == [f"note {i}" for i in range(5)]
