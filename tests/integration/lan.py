"""Shared helpers of the real-LAN integration tests: `memmesh run` daemons in netlab hosts.

Each daemon is a real `python -m mesh run` process inside its own network namespace of a
`tests.netlab` LAN (10.77.0.N), with its data directory and log file under pytest's
tmp_path. Namespaces do not isolate the filesystem, so the test process talks to every
daemon directly through its control socket (`DATA/control.sock`, `mesh.control.call`).

`cluster` is the fixture: it builds the lab, hands out `Daemon`s, prints the tail of every
daemon log when the test failed, and tears everything down (processes, namespaces) in
every case. A passing test stops its daemons with SIGTERM and checks they exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.control import ControlError, call, daemon_running
from mesh.identity import NodeIdentity

try:
    from tests import netlab
except ModuleNotFoundError:  # tests/ is not a package: import netlab.py from its folder
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import netlab  # type: ignore[no-redef, import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
MEMMESH = [sys.executable, "-m", "mesh"]
PORT = 7600  # every daemon's signaling port (each host has its own address)
STARTUP_S = 30.0
STOP_S = 20.0
POLL_S = 0.05
TAIL_LINES = 40


def require_netlab() -> None:
    """Skip (or, in CI, fail) when network namespaces cannot be created here."""
    reason = netlab.available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"network namespaces are required in CI: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


def memmesh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `memmesh` command line (outside any namespace) and return the result."""
    proc = subprocess.run(
        [*MEMMESH, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"memmesh {argv} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    *,
    context: Callable[[], str] | None = None,
    interval: float = POLL_S,
) -> float:
    """Poll `check` until it holds; return the seconds it took, or fail after `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            extra = f"\n{context()}" if context is not None else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def join_all(nodes: list[Daemon], token: str) -> None:
    """`memmesh init --join TOKEN` for every node, run concurrently."""
    procs = [
        subprocess.Popen(
            [*MEMMESH, "init", "--data-dir", str(n.data_dir), "--join", token],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for n in nodes
    ]
    for node, proc in zip(nodes, procs, strict=True):
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"init --join of {node.name} failed: {err.decode()}"
        node.node_id = NodeIdentity.load_or_create(node.data_dir).node_id


class Daemon:
    """One node: its host, data directory, log file and (when running) its process."""

    def __init__(self, cluster: Cluster, name: str, host: netlab.Host) -> None:
        """Describe the node; `init` and `start` make it real."""
        self.cluster = cluster
        self.name = name
        self.host = host
        self.data_dir = cluster.root / name
        self.log_path = cluster.root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""
        self.runs = 0
        self._terminated: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        """Name, host and node id."""
        return f"<{self.name} {self.host.address} {self.node_id}>"

    # ----------------------------------------------------------------- lifecycle

    def init(self, token: str | None = None) -> None:
        """`memmesh init` (a new mesh, or join with `token`)."""
        argv: list[str | Path] = ["init", "--data-dir", self.data_dir]
        if token is not None:
            argv += ["--join", token]
        memmesh(*argv)
        self.node_id = NodeIdentity.load_or_create(self.data_dir).node_id

    def token(self) -> str:
        """`memmesh token`: the join token of this node's mesh."""
        return memmesh("token", "--data-dir", self.data_dir).stdout.strip()

    def start(self) -> None:
        """Start `memmesh run` in this node's namespace (returns at once; see `wait_up`)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"===== run {self.runs} of {self.name} ({self.host.address})\n".encode())
            log.flush()
            self.proc = self.cluster.net.spawn(
                self.host,
                [
                    *MEMMESH,
                    "run",
                    "--data-dir",
                    str(self.data_dir),
                    "--interface",
                    self.host.address,
                    "--port",
                    str(PORT),
                    "--profile",
                    "standard",
                    "--log-level",
                    "info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def up(self) -> bool:
        """Return True once the daemon answers on its control socket; fail if it died."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            pytest.fail(f"{self.name} is not running (exit {code})\n{self.tail()}")
        return daemon_running(self.data_dir) and self._answers()

    def _answers(self) -> bool:
        try:
            self.call("status", timeout=5)
        except (OSError, ControlError):
            return False
        return True

    def wait_up(self, timeout: float = STARTUP_S) -> None:
        """Wait until the daemon serves its control socket."""
        wait_for(f"{self.name} to start", self.up, timeout, context=self.tail)

    def kill(self) -> None:
        """SIGKILL the daemon (no flush, no goodbye) and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_S)

    def terminate(self) -> None:
        """Send SIGTERM once (a second one during the final exit would kill the process)."""
        assert self.proc is not None
        if self.proc.poll() is None and self._terminated is not self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = self.proc

    def stop(self) -> int:
        """SIGTERM the daemon and return its exit status (fails if it takes over 20 s)."""
        assert self.proc is not None
        self.terminate()
        try:
            return self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR2)  # asyncio task stacks into the log
            time.sleep(0.5)
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} did not stop within {STOP_S:g} s of SIGTERM\n{self.tail()}")

    @property
    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    # ----------------------------------------------------------------- control socket

    def call(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        """One control request to the running daemon."""
        return call(self.data_dir, op, timeout=timeout, **fields)

    def cli(self, *argv: str) -> dict[str, Any]:
        """Run one data command inside the daemon; return {"stdout", "error"}."""
        command, *rest = argv
        reply: dict[str, Any] = self.call(
            "cli", argv=[command, "--data-dir", str(self.data_dir), *rest], cwd=os.getcwd()
        )
        return reply

    def put(
        self,
        tier: str,
        item_id: str,
        content: str,
        *,
        priority: str = "normal",
        ack: str = "local",
    ) -> dict[str, Any]:
        """`memmesh put` through the daemon; return the stored item's JSON (fails on error)."""
        reply = self.cli(
            "put",
            "--tier",
            tier,
            "--id",
            item_id,
            "--content",
            content,
            "--priority",
            priority,
            "--ack",
            ack,
            "--json",
        )
        assert reply["error"] is None, f"put {item_id} on {self.name}: {reply['error']}"
        item: dict[str, Any] = json.loads(reply["stdout"])
        return item

    def get(self, item_id: str) -> dict[str, Any] | None:
        """`memmesh get --json` through the daemon; None when the item is not there."""
        reply = self.cli("get", item_id, "--json")
        if reply["error"] is not None:
            return None
        item: dict[str, Any] = json.loads(reply["stdout"])
        return item

    def has(self, item_id: str) -> bool:
        """Return True if the item is visible here."""
        return self.get(item_id) is not None

    def missing(self, items: dict[str, str]) -> list[str]:
        """Return the ids of `items` (id -> content) absent here or with other content."""
        out = []
        for item_id, content in items.items():
            got = self.get(item_id)
            if got is None or got["content"] != content:
                out.append(item_id)
        return out

    def status(self) -> dict[str, Any]:
        """`memmesh status --json` (the daemon's status)."""
        status: dict[str, Any] = self.call("status")
        return status

    def item_count(self) -> int:
        """Return the number of live items over every tier."""
        return sum(t["items"] for t in self.status()["tiers"].values())

    def digests(self) -> dict[str, tuple[int, str]]:
        """Return tier -> (items, digest)."""
        return {t: (v["items"], v["digest"]) for t, v in self.status()["tiers"].items()}

    def peers(self) -> list[dict[str, Any]]:
        """`memmesh peers --json` rows."""
        rows: list[dict[str, Any]] = self.call("peers")
        return rows

    def connected(self) -> set[str]:
        """Return the node ids this daemon has a live channel to."""
        return {p["id"] for p in self.peers() if p["state"] == "connected"}

    # ----------------------------------------------------------------- logs

    def log(self) -> str:
        """Return the whole log (every run)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        """Return the last lines of the log, labelled."""
        body = "\n".join(self.log().splitlines()[-lines:])
        return (
            f"--- last {lines} lines of {self.name} ({self.host.address}, {self.node_id}):\n{body}"
        )


class Cluster:
    """A netlab LAN plus its daemons."""

    def __init__(self, net: netlab.Netlab, root: Path) -> None:
        """Wrap an open lab; daemons are added with `add`."""
        self.net = net
        self.root = root
        self.daemons: list[Daemon] = []

    def add(self, name: str | None = None) -> Daemon:
        """Add a host to the lab and a (not yet initialised) daemon on it."""
        host = self.net.add_host()
        daemon = Daemon(self, name or f"n{len(self.daemons) + 1}", host)
        self.daemons.append(daemon)
        return daemon

    def mesh(self, count: int) -> list[Daemon]:
        """Create a mesh of `count` nodes: the first `init`s, the others join with its token.

        Starts them all and waits until every one serves its control socket.
        """
        nodes = [self.add() for _ in range(count)]
        nodes[0].init()
        join_all(nodes[1:], nodes[0].token())
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_up()
        return nodes

    def tails(self, lines: int = TAIL_LINES) -> str:
        """Return the log tails of every daemon."""
        return "\n".join(d.tail(lines) for d in self.daemons)

    def wait_linked(self, nodes: list[Daemon], timeout: float = 60.0) -> float:
        """Wait until every node of `nodes` has a live channel to every other one."""
        ids = {n.node_id for n in nodes}

        def full() -> bool:
            return all(n.connected() >= ids - {n.node_id} for n in nodes)

        return wait_for(
            f"a full mesh of {len(nodes)}", full, timeout, context=lambda: self.describe(nodes)
        )

    def wait_items(
        self, nodes: list[Daemon], items: dict[str, str], timeout: float, what: str = ""
    ) -> float:
        """Wait until every node of `nodes` holds every item (id -> content)."""

        def everywhere() -> bool:
            # Item counts first (one request per node), each item only once they add up.
            if any(n.item_count() < len(items) for n in nodes):
                return False
            return all(not n.missing(items) for n in nodes)

        def context() -> str:
            gaps = {n.name: n.missing(items)[:10] for n in nodes if n.alive}
            return f"missing: {gaps}\n{self.describe(nodes)}"

        return wait_for(
            what or f"{len(items)} items on {len(nodes)} nodes",
            everywhere,
            timeout,
            context=context,
        )

    def wait_converged(
        self, nodes: list[Daemon], timeout: float, *, items: int | None = None
    ) -> float:
        """Wait until every node of `nodes` has the same per-tier item counts and digests.

        With `items`, also until each holds exactly that many live items in all.
        """

        def equal() -> bool:
            seen = [n.digests() for n in nodes]
            if items is not None and any(sum(c for c, _ in d.values()) != items for d in seen):
                return False
            return all(d == seen[0] for d in seen)

        def context() -> str:
            return "\n".join(f"{n.name}: {n.digests()}" for n in nodes if n.alive)

        return wait_for("equal tier digests", equal, timeout, context=context)

    def describe(self, nodes: list[Daemon] | None = None) -> str:
        """Return each running daemon's peer table, then every log tail."""
        lines = []
        for n in nodes or self.daemons:
            if not n.alive:
                lines.append(f"{n.name}: not running")
                continue
            try:
                rows = [(p["id"], p["state"], p["member"]) for p in n.peers()]
            except (OSError, ControlError) as exc:
                rows = [("?", repr(exc), "")]
            lines.append(f"{n.name} ({n.node_id}) peers: {rows}")
        return "\n".join(lines) + "\n" + self.tails()

    def stop_all(self) -> None:
        """SIGTERM every running daemon at once; each must exit 0 within 20 s."""
        running = [d for d in self.daemons if d.alive]
        for daemon in running:
            daemon.terminate()
        codes = {d.name: d.stop() for d in running}
        bad = {name: code for name, code in codes.items() if code != 0}
        assert not bad, f"daemons exited non-zero after SIGTERM: {bad}\n{self.tails()}"


@contextlib.contextmanager
def open_cluster(request: pytest.FixtureRequest, root: Path) -> Iterator[Cluster]:
    """Yield a Cluster on a fresh lab; print every log tail if the test failed; tear down."""
    require_netlab()
    failed_before = request.session.testsfailed
    with netlab.Netlab() as net:
        cluster = Cluster(net, root)
        try:
            yield cluster
        finally:
            if request.session.testsfailed > failed_before and cluster.daemons:
                reporter = request.config.pluginmanager.get_plugin("terminalreporter")
                text = f"\n===== daemon logs of {request.node.name}\n{cluster.tails()}"
                if reporter is not None:
                    reporter.write_line(text)
                else:
                    print(text, file=sys.stderr)
