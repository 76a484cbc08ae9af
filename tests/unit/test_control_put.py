"""The structured `put` control request: fields checked first, then `Mesh.put`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crdt.item import InvalidItemError
from crdt.tier import TierDoc
from mesh import control, control_ops
from mesh.api import Mesh
from mesh.cli import main as cli_main
from mesh.control import ControlClient, ControlError, call
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


async def test_citations_are_stored(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path) as mesh:
        await control_ops.put(mesh, {"tier": "L2", "content": "x", "id": "c", "citations": ["a"]})
        assert (await mesh.get("c")).citations == ("a",)


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
        ({"tier": "L1", "content": "x", "embedding": ["1", "2"]}, "list of numbers"),
        ({"tier": "L1", "content": "x", "embedding": [True, False]}, "list of numbers"),
        ({"tier": "L1", "content": "x", "priority": ""}, "priority must be one of"),
        ({"tier": "L1", "content": "x", "ack": ""}, "ack must be one of"),
        ({"tier": "L1", "content": "x", "citations": ["a", 1]}, "citations must be a list"),
        ({"tier": "L1", "content": "x", "timeout_s": float("nan")}, "timeout_s must be in"),
        ({"tier": "L1", "content": "x", "timeout_s": 0}, "timeout_s must be in"),
        ({"tier": "L1", "content": "x", "timeout_s": 1e9}, "timeout_s must be in"),
        ({"tier": "L1", "content": "x", "confidence": 10**400}, "confidence"),
    ],
)
async def test_a_bad_field_is_refused_and_nothing_is_stored(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    async with Mesh.open(tmp_path) as mesh:
        with pytest.raises((ValueError, InvalidItemError), match=re.escape(message)):
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


async def test_a_write_that_missed_its_ack_says_it_was_applied(tmp_path: Path) -> None:
    init_node(tmp_path)  # alone: no peer can ack

    def write() -> ControlError:
        with ControlClient(tmp_path, timeout=10.0) as client:
            with pytest.raises(ControlError) as refused:
                client.put("L1", "stored anyway", id="lonely", ack="peer", timeout_s=0.3)
            assert client.call("status")["tiers"]["L1"]["items"] == 1  # connection still fine
            return refused.value

    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        error = await asyncio.to_thread(write)
        assert daemon.mesh is not None and (await daemon.mesh.get("lonely")).content
    assert error.type == "WriteError" and error.applied is True


async def test_a_daemon_stops_while_a_kept_open_client_idles(tmp_path: Path) -> None:
    init_node(tmp_path)
    client = None
    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))):
        client = await asyncio.to_thread(ControlClient, tmp_path, 5.0)
        await asyncio.to_thread(client.call, "status")
        began = time.monotonic()
    assert time.monotonic() - began < 5.0
    with pytest.raises(ControlError, match="closed the connection"):
        client.call("status")  # the daemon closed it; nothing answers any more
    with pytest.raises(ControlError, match="open a new ControlClient"):
        client.call("status")


async def test_a_write_waiting_for_its_ack_when_the_daemon_stops_gets_its_answer(
    tmp_path: Path,
) -> None:
    init_node(tmp_path)  # alone: the `peer` ack never comes
    outcome: list[BaseException] = []

    def write() -> None:
        with ControlClient(tmp_path, timeout=30.0) as client:
            try:
                client.put("L1", "kept", id="kept", ack="peer", timeout_s=60)
            except ControlError as exc:
                outcome.append(exc)

    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        writer = asyncio.create_task(asyncio.to_thread(write))
        assert daemon.mesh is not None
        for _ in range(500):  # until the write is stored and waits for its ack
            if daemon.mesh.memory.count("L1"):
                break
            await asyncio.sleep(0.01)
        began = time.monotonic()
    await writer
    assert time.monotonic() - began < 5.0  # not the write's 60 s
    (error,) = outcome
    assert isinstance(error, ControlError)
    assert error.type == "WriteError" and error.applied is True, error
    assert "node stopped" in str(error)
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("kept")).content == "kept"


async def test_an_answer_that_never_comes_holds_the_shutdown_only_for_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "ANSWER_GRACE_S", 0.2)
    started = asyncio.Event()

    async def stuck(request: dict[str, Any]) -> Any:
        started.set()
        await asyncio.Event().wait()

    def ask() -> ControlError:
        with ControlClient(tmp_path, timeout=10.0) as client, pytest.raises(ControlError) as cut:
            client.call("anything")
        return cut.value

    async with control.ControlServer(tmp_path, stuck):
        asking = asyncio.create_task(asyncio.to_thread(ask))
        await asyncio.wait_for(started.wait(), timeout=10)
        began = time.monotonic()
    assert time.monotonic() - began < 2.0
    error = await asking
    assert "before answering" in str(error) and "read it back" in str(error)


# --- the client's reading of replies, against a scripted server --------------------------


@contextmanager
def scripted_server(tmp_path: Path, script: Callable[[socket.socket], None]) -> Iterator[None]:
    """Serve one connection on tmp_path/control.sock with `script(connection)`."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            script(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=5)
        listener.close()


def read_lines(connection: socket.socket, count: int) -> None:
    data = b""
    while data.count(b"\n") < count:
        data += connection.recv(4096)


def test_replies_arriving_together_or_in_pieces_answer_their_own_requests(
    tmp_path: Path,
) -> None:
    def script(connection: socket.socket) -> None:
        read_lines(connection, 1)
        connection.sendall(b'{"ok": true, "result": 1}\n{"ok": true, "res')  # one and a half
        read_lines(connection, 1)
        time.sleep(0.05)
        connection.sendall(b'ult": 2}\n')
        read_lines(connection, 1)
        connection.sendall(b'{"ok": false, "error": "no", "type": "ValueError"}\n')

    with scripted_server(tmp_path, script), ControlClient(tmp_path, timeout=5.0) as client:
        assert client.call("first") == 1
        assert client.call("second") == 2
        with pytest.raises(ControlError, match="no") as refused:
            client.call("third")
        assert refused.value.type == "ValueError" and refused.value.applied is False


def test_after_a_timeout_a_late_reply_is_never_taken_for_the_next_one(tmp_path: Path) -> None:
    def script(connection: socket.socket) -> None:
        read_lines(connection, 1)
        time.sleep(0.5)
        with contextlib.suppress(BrokenPipeError):  # the client gave up and closed
            connection.sendall(b'{"ok": true, "result": "slow"}\n')

    with scripted_server(tmp_path, script), ControlClient(tmp_path, timeout=5.0) as client:
        with pytest.raises(TimeoutError):
            client.call("slow", reply_timeout_s=0.1)
        with pytest.raises(ControlError, match="open a new ControlClient"):
            client.call("fast")


async def test_the_cli_says_a_write_that_missed_its_ack_is_stored(tmp_path: Path) -> None:
    init_node(tmp_path)  # alone: no peer can ack
    put = ["put", "--data-dir", str(tmp_path), "--tier", "L1", "--id", "x", "--content", "y"]
    put += ["--ack", "peer", "--timeout", "0.3"]
    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))):
        reply = await asyncio.to_thread(call, tmp_path, "cli", argv=put, cwd="/")
    assert "timed out" in reply["error"] and "do not write it again" in reply["error"]


async def test_a_client_that_stops_reading_a_large_reply_cannot_hold_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: its connection stayed open with the reply unsent, and from Python 3.12
    on the server's wait_closed waited for it forever (the daemon never closed its store)."""
    monkeypatch.setattr(control, "ANSWER_GRACE_S", 0.2)
    reply = "x" * (32 << 20)

    async def large(request: dict[str, Any]) -> Any:
        return reply

    sock = socket.socket(socket.AF_UNIX)
    async with control.ControlServer(tmp_path, large):
        await asyncio.to_thread(sock.connect, str(tmp_path / "control.sock"))
        sock.sendall(b'{"op": "dump"}\n')  # then never reads
        await asyncio.sleep(0.3)
    received = 0
    sock.settimeout(5)
    with contextlib.suppress(ConnectionError):
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    sock.close()
    assert received < len(reply)  # cut off when the server left, not sent to the end


async def test_cli_file_arguments_through_the_daemon_are_the_clients_in_any_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: argv was rewritten before parsing, assuming import's FILE came last, so
    `import FILE --tier L1` failed with a daemon, and `--output=F` was the daemon's F."""
    node, work = tmp_path / "node", tmp_path / "work"
    work.mkdir()
    init_node(node)
    monkeypatch.chdir(work)
    source = TierDoc("L1", client_id=5)
    update = source.write([("imp", "w", json.dumps({"not": "a record"}))])
    assert update is not None
    (work / "up.bin").write_bytes(update)
    async with Daemon(DaemonOptions(node, interfaces=("127.0.0.1",))):
        argv = ["import", "--data-dir", str(node), "up.bin", "--tier", "L1"]
        assert await asyncio.to_thread(cli_main, argv) == 0
        export = ["export", "--data-dir", str(node), "--tier", "L1", "--output=out.bin"]
        assert await asyncio.to_thread(cli_main, export) == 0
    assert (work / "out.bin").stat().st_size > 0  # in the client's directory
