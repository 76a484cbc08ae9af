"""The local control socket: the CLI talks to a running daemon through `DATA/control.sock`.

One JSON object per line each way. The socket file is owner-only (0600) inside the
owner-only data directory, so only the user who runs the daemon can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH_BYTES = 107  # sun_path on Linux, less its terminating NUL
MAX_REQUEST_BYTES = 64 << 20
_CLOSED_UNANSWERED = (
    "the daemon closed the connection before answering; a write sent may have taken "
    "effect: read it back before writing it again"
)
ANSWER_GRACE_S = 5.0  # at shutdown, how long a request being answered may still take

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The daemon refused or failed a request; the message says why.

    `type` names the daemon's exception (empty when the failure is the connection's), and
    `applied` is True when a failed write took effect anyway (`WriteError.applied`): it is
    stored and replicates, so it must not be written again.
    """

    def __init__(self, message: str, *, type: str = "", applied: bool = False) -> None:
        """Carry the daemon's message, its exception type and whether a write took effect."""
        super().__init__(message)
        self.type = type
        self.applied = applied


def socket_path(data_dir: Path) -> Path:
    """Return where the daemon of `data_dir` listens."""
    return data_dir / SOCKET_NAME


def check_socket_path(data_dir: Path) -> Path:
    """Return the control socket's path; raise ControlError if a Unix socket cannot have it."""
    path = socket_path(data_dir)
    size = len(os.fsencode(path.absolute()))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ControlError(
            f"{path}: the control socket's path is {size} bytes, Unix sockets take at most "
            f"{MAX_SOCKET_PATH_BYTES}; use a data directory with a shorter path"
        )
    return path


class ControlServer:
    """Serves requests to `handler(request) -> awaitable result` on the data directory's socket.

    The handler is called as soon as a request line is complete, in the callback that read
    it; whatever it does before returning its awaitable (the daemon hands a `put` to the
    node) costs no event-loop iteration. An asyncio stream would first wake a reader task,
    about 0.1 ms after a quiet spell, on every CRITICAL write's path.

    Requests on one connection are answered one at a time, in order; the next is read once
    the reply is written out (flow control: a client that stops reading gets no more
    served). Shutdown is in two steps, so that no client is left without the answer to a
    request it sent: `stop_accepting()` closes the listener and every idle connection,
    while a request being answered is answered (then its connection closes); leaving the
    context waits up to ANSWER_GRACE_S for those answers, then closes what is left. A
    daemon stops accepting, then stops its node (which fails the writes still waiting for
    acks, with `applied=True`), then leaves the context.
    """

    def __init__(self, data_dir: Path, handler: Handler) -> None:
        """Prepare to listen on `data_dir/control.sock`; raise ControlError if too long."""
        self._path = check_socket_path(data_dir)
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._in_flight: set[asyncio.Future[Any]] = set()  # requests being answered
        self._changed = asyncio.Event()  # set whenever an answer ends or a connection goes
        self._closing = False

    @property
    def closing(self) -> bool:
        """Return True once `stop_accepting()` ran: no new request is served."""
        return self._closing

    async def __aenter__(self) -> ControlServer:
        """Start listening (a stale socket file from a crashed daemon is replaced)."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        old = os.umask(0o177)
        try:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: _Connection(self, self._handler), path=str(self._path)
            )
        finally:
            os.umask(old)
        os.chmod(self._path, 0o600)
        return self

    def stop_accepting(self) -> None:
        """Take no new connection or request; close idle connections (idempotent)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            if not connection.answering:
                connection.close()

    def _opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def _lost(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._changed.set()

    def _started(self, answer: asyncio.Future[Any]) -> None:
        self._in_flight.add(answer)
        answer.add_done_callback(self._finished)

    def _finished(self, answer: asyncio.Future[Any]) -> None:
        self._in_flight.discard(answer)
        self._changed.set()

    async def __aexit__(self, *exc: object) -> None:
        """Stop accepting, let answers in progress finish (bounded), close, remove the socket."""
        self.stop_accepting()
        await self._wait_until(lambda: not self._in_flight)  # also those whose client left
        for connection in list(self._connections):
            connection.close()  # after the reply it is writing, if any
        await self._wait_until(lambda: not self._connections)
        for connection in list(self._connections):
            # abort: a client that stopped reading a large reply would keep its connection
            # (and, from Python 3.12 on, wait_closed below) open forever.
            connection.abort()
        await self._wait_until(lambda: not self._connections)  # closed in an iteration or two
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANSWER_GRACE_S):  # all aborted: returns at once
                    await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()` (checked whenever an answer ends or a connection goes), bounded."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_GRACE_S):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()


class _Connection(asyncio.Protocol):
    """One client connection: request lines in, one reply line per request, in order."""

    def __init__(self, server: ControlServer, handler: Handler) -> None:
        self._server = server
        self._handler = handler
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanned = 0  # no newline in self._buffer[:self._scanned]
        self._answer: asyncio.Future[bytes] | None = None  # the request being answered
        self._write_paused = False
        self._read_paused = False
        self._eof = False

    @property
    def answering(self) -> bool:
        """Return True while a request of this connection waits for its reply."""
        return self._answer is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server (closed at once if it stopped accepting)."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._opened(self)
        if self._server.closing:  # accepted just as the server stopped
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a request still being answered runs on, unanswered."""
        self._transport = None
        self._server._lost(self)

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes; serve the next request if one is complete."""
        self._buffer += data
        if len(self._buffer) > MAX_REQUEST_BYTES and self._transport is not None:
            # Requests queue up behind the one being answered; one over the cap is refused
            # in its turn (`_serve_next`), after the replies to those before it.
            self._transport.pause_reading()
            self._read_paused = True
        self._serve_next()

    def eof_received(self) -> bool:
        """The client sends nothing more: answer what it sent, then close (`_serve_next`)."""
        self._eof = True
        self._serve_next()
        return True  # keep the transport open for the replies

    def pause_writing(self) -> None:
        """The reply is not being read: serve no further request until it drains."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The reply drained: go on with queued requests."""
        self._write_paused = False
        self._serve_next()

    def close(self) -> None:
        """Close after writing what is buffered."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        if self._transport is not None:
            self._transport.abort()

    def _serve_next(self) -> None:
        """Start answering the next complete request, if none is being answered."""
        transport = self._transport
        if transport is None or self._answer is not None or self._write_paused:
            return
        if self._server.closing:
            transport.close()  # answered what it had sent before the stop
            return
        end = self._buffer.find(b"\n", self._scanned, MAX_REQUEST_BYTES + 1)
        if end < 0:
            self._scanned = min(len(self._buffer), MAX_REQUEST_BYTES + 1)
            if len(self._buffer) > MAX_REQUEST_BYTES:
                error = f"request over {MAX_REQUEST_BYTES} bytes"
                transport.write(_reply_line({"ok": False, "error": error, "type": "ValueError"}))
                transport.close()
                return
            if self._eof:
                if not self._buffer:
                    transport.close()
                    return
                end = len(self._buffer)  # a last request without its newline, as readline
            else:
                if self._read_paused:
                    self._read_paused = False
                    transport.resume_reading()
                return
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        self._answer = asyncio.ensure_future(_answer(self._handler, line))
        self._server._started(self._answer)
        self._answer.add_done_callback(self._reply)

    def _reply(self, answer: asyncio.Future[bytes]) -> None:
        self._answer = None
        if self._transport is None:
            return
        if answer.cancelled() or answer.exception() is not None:
            self._transport.close()  # unanswered: never let the next reply answer this one
            return
        self._transport.write(answer.result())
        self._serve_next()


def _answer(handler: Handler, line: bytes) -> Awaitable[bytes]:
    """Start answering one request line; the reply is an error reply, never a raise.

    The handler runs before this returns; only the wait for its result is left.
    """
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        pending = handler(request)
    except (Exception, SystemExit) as exc:  # reported; never stops the daemon
        return _ready(_reply_line(_error_reply(exc)))
    return _result_reply(pending)


async def _result_reply(pending: Awaitable[Any]) -> bytes:
    try:
        return _reply_line({"ok": True, "result": await pending})
    except (Exception, SystemExit) as exc:  # reported (a result JSON cannot encode too)
        return _reply_line(_error_reply(exc))


async def _ready(reply: bytes) -> bytes:
    return reply


def _error_reply(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": str(exc) or type(exc).__name__,
        "type": type(exc).__name__,
        "applied": bool(getattr(exc, "applied", False)),
    }


def _reply_line(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def daemon_running(data_dir: Path) -> bool:
    """Return True if a daemon answers on `data_dir`'s control socket."""
    path = socket_path(data_dir)
    if not path.exists():
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2.0)
        sock.connect(str(path))
        return True
    return False


class ControlClient:
    """One kept-open connection to a daemon: many requests without a connect each.

    The module's `call()` opens a connection per request, as the CLI (one process per
    command) needs. A program that talks to the daemon often keeps a client instead: on
    this machine the connect alone makes a request about 0.6 ms slower (the daemon's loop
    wakes to accept, then again to read). After a timeout or a broken connection the
    client is closed (a late reply would answer the wrong request): open a new one.
    """

    def __init__(self, data_dir: Path | str, timeout: float = 60.0) -> None:
        """Connect to the daemon of `data_dir`; raise OSError if none listens."""
        self.timeout = timeout
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(socket_path(Path(data_dir))))
        except BaseException:
            self.close()
            raise
        self._buffer = b""

    def __enter__(self) -> ControlClient:
        """Return the connected client."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection."""
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, op: str, *, reply_timeout_s: float | None = None, **fields: Any) -> Any:
        """Send one request and return its result; raise ControlError if refused.

        `reply_timeout_s` (default: the client's `timeout`) bounds the wait for the reply.
        """
        sock = self._sock
        if sock is None:
            raise ControlError("this control connection is closed: open a new ControlClient")
        try:
            sock.settimeout(self.timeout if reply_timeout_s is None else reply_timeout_s)
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ControlError(_CLOSED_UNANSWERED)
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\n")
            reply = json.loads(line)
        except ConnectionError as exc:  # reset or broken pipe: the daemon went away
            self.close()
            raise ControlError(f"{_CLOSED_UNANSWERED} ({exc})") from None
        except BaseException:
            self.close()  # the reply to this request may still come: never read it as another's
            raise
        if not reply.get("ok"):
            raise ControlError(
                reply.get("error", "request failed"),
                type=str(reply.get("type", "")),
                applied=bool(reply.get("applied", False)),
            )
        return reply.get("result")

    def put(self, tier: str, content: str, **fields: Any) -> dict[str, Any]:
        """Store one item through the daemon (`mesh.control_ops.put`'s fields); return it.

        A failed write raises ControlError; if its `applied` is True the item is stored and
        replicates anyway (an `ack` beyond `local` that timed out): do not write it again.
        """
        timeout_s = fields.get("timeout_s")
        wait = self.timeout
        if isinstance(timeout_s, int | float) and timeout_s > 0:
            wait = max(wait, float(timeout_s) + 5.0)  # the daemon answers once its wait ends
        result: dict[str, Any] = self.call(
            "put", reply_timeout_s=wait, tier=tier, content=content, **fields
        )
        return result


def call(data_dir: Path, op: str, timeout: float = 60.0, **fields: Any) -> Any:
    """Send one request to the daemon and return its result; raise ControlError if refused."""
    with ControlClient(data_dir, timeout) as client:
        return client.call(op, **fields)
