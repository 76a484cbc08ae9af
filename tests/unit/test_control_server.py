"""The control socket's server: request lines in, reply lines out, in order, bounded."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from mesh import control
from mesh.daemon import Daemon, DaemonOptions
from mesh.joining import init_node


def _replies(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    """Read `count` reply lines (blocking)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def _number_after(delay_s: float) -> control.Handler:
    """Return a handler that answers a request with its `n` after `delay_s`."""

    async def handler(request: dict[str, Any]) -> Any:
        await asyncio.sleep(delay_s)
        return request["n"]

    return handler


async def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    await asyncio.to_thread(sock.connect, str(path / "control.sock"))
    return sock


async def test_requests_sent_together_are_answered_one_by_one_in_order(tmp_path: Path) -> None:
    running = 0

    async def handler(request: dict[str, Any]) -> Any:
        nonlocal running
        running += 1
        assert running == 1  # one request of a connection at a time
        await asyncio.sleep(request["wait"])
        running -= 1
        return request["n"]

    async with control.ControlServer(tmp_path, handler):
        sock = await _connect(tmp_path)
        lines = [json.dumps({"n": n, "wait": 0.05 if n == 0 else 0.0}) for n in range(3)]
        sock.sendall("\n".join(lines).encode() + b"\n")
        replies = await asyncio.to_thread(_replies, sock, 3)
        sock.close()
    assert [r["result"] for r in replies] == [0, 1, 2]


async def test_the_handler_runs_in_the_callback_that_read_the_request(tmp_path: Path) -> None:
    """No task is woken first: what it does before returning is not a loop iteration later."""
    seen: list[asyncio.Task[Any] | None] = []

    def handler(request: dict[str, Any]) -> Any:
        seen.append(asyncio.current_task())
        return asyncio.sleep(0, result="done")

    async with control.ControlServer(tmp_path, handler):
        sock = await _connect(tmp_path)
        sock.sendall(b'{"op": "x"}\n')
        (reply,) = await asyncio.to_thread(_replies, sock, 1)
        sock.close()
    assert reply == {"ok": True, "result": "done"}
    assert seen == [None]


async def test_a_handler_that_raises_at_once_is_an_error_reply(tmp_path: Path) -> None:
    def handler(request: dict[str, Any]) -> Any:
        if request.get("op") == "bad":
            raise ValueError("refused before any await")
        return asyncio.sleep(0, result="fine")

    async with control.ControlServer(tmp_path, handler):
        sock = await _connect(tmp_path)
        sock.sendall(b'{"op": "bad"}\n[1, 2]\n{"op": "good"}\n')
        bad, not_object, good = await asyncio.to_thread(_replies, sock, 3)
        sock.close()
    assert bad["ok"] is False and bad["type"] == "ValueError" and "before any await" in bad["error"]
    assert not_object["ok"] is False and "JSON object" in not_object["error"]
    assert good == {"ok": True, "result": "fine"}


async def test_a_request_over_the_cap_is_refused_and_its_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_REQUEST_BYTES", 1000)
    served: list[Any] = []

    async def handler(request: dict[str, Any]) -> Any:
        served.append(request)
        return len(served)

    async with control.ControlServer(tmp_path, handler):
        for tail in (b"", b"\n"):  # still coming, or a whole line already over the cap
            sock = await _connect(tmp_path)
            sock.sendall(b'{"op": "' + b"x" * 1500 + b'"}' + tail)
            replies = await asyncio.to_thread(_replies, sock, 2)  # one reply, then EOF
            sock.close()
            assert len(replies) == 1 and replies[0]["ok"] is False
            assert "over 1000 bytes" in replies[0]["error"]
    assert served == []


async def test_a_client_that_stops_sending_still_gets_its_answers(tmp_path: Path) -> None:
    """Also the last request without its newline, as readline served it."""
    async with control.ControlServer(tmp_path, _number_after(0.02)):
        sock = await _connect(tmp_path)
        sock.sendall(b'{"n": 1}\n{"n": 2}')
        sock.shutdown(socket.SHUT_WR)
        replies = await asyncio.to_thread(_replies, sock, 3)  # two, then the server closes
        sock.close()
    assert [r["result"] for r in replies] == [1, 2]


@pytest.mark.parametrize(
    ("pieces", "answer_s"),
    [
        ((b'{"n": 1}\n', b'{"n": "' + b"x" * 1500), 0.3),  # arrives while 1 is answered
        ((b'{"n": 1}\n{"n": "' + b"x" * 1500,), 0.0),  # in one read behind request 1
    ],
    ids=["while-answering", "same-read"],
)
async def test_a_request_over_the_cap_is_refused_in_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: tuple[bytes, ...], answer_s: float
) -> None:
    """Regression: refused at once it cut off the answer in progress; sent in one read
    with the request before it, it was never refused and the client waited."""
    monkeypatch.setattr(control, "MAX_REQUEST_BYTES", 1000)

    async with control.ControlServer(tmp_path, _number_after(answer_s)):
        sock = await _connect(tmp_path)
        for piece in pieces:
            sock.sendall(piece)
            await asyncio.sleep(0.05)
        replies = await asyncio.to_thread(_replies, sock, 2)
        sock.close()
    assert [r.get("result") for r in replies] == [1, None]
    assert "over 1000 bytes" in replies[1]["error"]


async def test_a_result_json_cannot_encode_is_an_error_reply(tmp_path: Path) -> None:
    async def handler(request: dict[str, Any]) -> Any:
        return {1} if request["op"] == "bad" else "fine"

    async with control.ControlServer(tmp_path, handler):
        sock = await _connect(tmp_path)
        sock.sendall(b'{"op": "bad"}\n{"op": "good"}\n')
        bad, good = await asyncio.to_thread(_replies, sock, 2)
        sock.close()
    assert bad["ok"] is False and bad["type"] == "TypeError" and good["result"] == "fine"


async def test_an_answer_cancelled_is_never_answered_by_the_next_reply(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()

    async def handler(request: dict[str, Any]) -> Any:
        if request["n"] == 1:
            waiting = loop.create_future()
            loop.call_later(0.05, waiting.cancel)
            await waiting
        return request["n"]

    async with control.ControlServer(tmp_path, handler):
        sock = await _connect(tmp_path)
        sock.sendall(b'{"n": 1}\n{"n": 2}\n')
        replies = await asyncio.to_thread(_replies, sock, 1)
        sock.close()
    assert replies == []  # the connection closes unanswered, as the stream server did


async def test_a_put_reaches_the_node_before_its_answer_is_awaited(tmp_path: Path) -> None:
    init_node(tmp_path)
    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        assert daemon.mesh is not None
        request = {"op": "put", "tier": "L1", "content": "now", "id": "early"}
        pending = daemon.handle(request)
        assert daemon.mesh.memory.get("early").content == "now"  # applied by Node.handle
        reply = await pending
        with pytest.raises(ValueError, match="unknown field"):
            daemon.handle({**request, "colour": "red"})  # checked before anything is written
    assert reply["id"] == "early"
