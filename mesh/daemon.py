"""`memmesh run`: one node on the LAN — store, Node, WebRTC, mDNS, control socket, metrics.

This module only composes adapters; every protocol decision is the Node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import math
import os
import random
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from crdt.item import MemoryItem
from discovery.mdns import MdnsDiscovery
from discovery.records import PeerRecord
from discovery.static import StaticDiscovery, StaticPeer, parse_bootstrap
from hub_role.signing import Ed25519Signer
from mesh import control_ops
from mesh.api import Mesh
from mesh.cli_net import run_in_daemon
from mesh.control import ControlServer
from mesh.hub_cli import metrics_lines, stats_json
from mesh.joining import MeshSetup, load_setup
from mesh.leases import LeaseError, acquire, release
from mesh.node import Node
from mesh.profiles import Profile, detect, node_config
from mesh.runtime import NodeRuntime
from mesh.webrtc import WebRtcTransport

log = logging.getLogger("memmesh.daemon")
STATIC_PROBE_S = 5.0  # bootstrap addresses are probed this often (found peers are linked)
DISCOVERY_GRACE_S = 2.0  # the node's timers start by then even if no peer was found
METRICS_REQUEST_TIMEOUT_S = 5.0  # a metrics client must send its request line by then
METRICS_MAX_CLIENTS = 8  # metrics connections served at once; more are closed at once
METRICS_CACHE_S = 1.0  # the text is rebuilt at most this often (it counts every tier's items)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """What `memmesh run` was asked for."""

    data_dir: Path
    profile: Profile | None = None
    interfaces: tuple[str, ...] = ()
    signaling_port: int = 0
    metrics_port: int | None = None
    compact_every_s: float = 300.0  # 0: never compact while running (only at shutdown)


class RefusalLog:
    """Logs refused signaling: the first of each (address, reason), then one per LOG_EVERY.

    Strangers can make refusals cheaply (a wrong mesh, a bad MAC, idle connections): one
    line each would let them flood the log. Glare is routine and logged at INFO.
    """

    LOG_EVERY = 100
    MAX_PAIRS = 1024  # (address, reason) pairs remembered; the oldest are forgotten

    def __init__(self) -> None:
        """Start with nothing counted."""
        self._counts: dict[tuple[str, str], int] = {}

    def __call__(self, address: str, reason: str) -> None:
        """Count one refusal and log it if it is the first or a LOG_EVERY-th of its pair."""
        key = (address, reason)
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count  # most recent last
        if len(self._counts) > self.MAX_PAIRS:
            del self._counts[next(iter(self._counts))]
        if count % self.LOG_EVERY != 1:
            return
        level = logging.INFO if reason == "glare" else logging.WARNING
        more = f" ({count} so far)" if count > 1 else ""
        log.log(level, "refused signaling from %s: %s%s", address, reason, more)


def item_json(item: MemoryItem) -> dict[str, Any]:
    """Return an item as JSON with its embedding as a list (CLI contract keys included)."""
    return item.to_json()


class Daemon:
    """A running node: `await serve()` until a signal or `stop()`, or `async with` it."""

    def __init__(self, options: DaemonOptions) -> None:
        """Prepare; nothing is opened until `serve()`."""
        self.options = options
        self._stop = asyncio.Event()
        self.setup: MeshSetup | None = None
        self.mesh: Mesh | None = None
        self.runtime: NodeRuntime | None = None
        self.transport: WebRtcTransport | None = None
        self.discovery: MdnsDiscovery | None = None
        self.profile = Profile.STANDARD
        self.started_at = time.time()
        self._ready = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Serve in a task (no signal handlers: the caller owns them); return once up.

        Raises what `serve` raised if it failed before it was up.
        """
        self._serving = asyncio.create_task(self.serve(handle_signals=False))
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self._serving  # it ended before it was up: raise its error
            raise RuntimeError("the daemon stopped before it was up")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop gracefully (flush and close) and wait for it."""
        self.stop()
        if self._serving is not None:
            await self._serving

    def stop(self) -> None:
        """Ask `serve()` to shut down gracefully."""
        self._stop.set()

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Run until stopped (SIGINT/SIGTERM too if `handle_signals`); flush and close."""
        options = self.options
        setup = load_setup(options.data_dir)
        self.setup = setup
        detected, on_battery = detect()
        self.profile = options.profile or detected
        config = node_config(self.profile, on_battery=on_battery)
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
        # A ceiling persisted 200 ms ahead lets most urgent writes overlap their send with
        # their commit (mesh/runtime.py); a restart moves the clock at most that far ahead.
        memory_config = dataclasses.replace(config.memory, hlc_ceiling_window_ms=200)
        async with Mesh.open(options.data_dir, config=memory_config) as mesh:
            self.mesh = mesh
            # The node key signs hub claims and relayed frames (hub_role).
            signer = Ed25519Signer(bytes(setup.identity.signing_key))
            node = Node(mesh.memory, config, random.Random(os.urandom(16)), signer=signer)
            committer = mesh._running()
            holder: dict[str, NodeRuntime] = {}
            host = options.interfaces[0] if len(options.interfaces) == 1 else "0.0.0.0"
            transport = WebRtcTransport(
                setup.identity,
                setup.credentials,
                host=host,
                port=options.signaling_port,
                tiers=config.tiers,
                profile=self.profile.value,
                on_link_up=lambda peer, address: holder["rt"].link_up(peer, address),
                on_link_down=lambda peer: holder["rt"].link_down(peer),
                on_frame=lambda peer, data: holder["rt"].frame(peer, data),
                on_refused=RefusalLog(),
            )
            runtime = NodeRuntime(node, committer, transport, on_events=mesh.notify)
            holder["rt"] = runtime
            self.runtime, self.transport = runtime, transport
            async with transport, runtime:
                mesh.attach(runtime)
                me = PeerRecord(
                    node_id=setup.identity.node_id,
                    mesh_id=setup.credentials.mesh_id,
                    address=host,
                    port=transport.port,
                    protocol_version=2,
                    tiers=config.tiers,
                    profile=self.profile.value,
                    hub_eligible=config.hub_eligible,
                )
                discovery = MdnsDiscovery(
                    me,
                    interfaces=list(options.interfaces) or None,
                    on_found=self._found,
                    on_lost=runtime.peer_lost,
                    confirm=transport.identify,  # adverts are unauthenticated: ask the node
                )
                self.discovery = discovery
                static = self._static_discovery(setup.bootstrap, transport, config.tiers)
                async with (
                    discovery,
                    static or contextlib.nullcontext(),
                    ControlServer(options.data_dir, self.handle) as control,
                ):
                    # Start the node's timers (hub election included) once discovery had a
                    # chance to find the mesh: a node whose boot wait ran out before it saw
                    # its peers would claim the hub role and could unseat a healthy hub.
                    first_tick = loop.call_later(DISCOVERY_GRACE_S, runtime.tick)
                    metrics = await self._start_metrics()
                    maintenance = asyncio.create_task(self.compact_periodically(mesh))
                    log.info(
                        "node %s up: mesh %s, profile %s, signaling port %d",
                        setup.identity.node_id,
                        setup.credentials.mesh_id,
                        self.profile.value,
                        transport.port,
                    )
                    self._ready.set()
                    await self._stop.wait()
                    log.info("shutting down: flushing")
                    first_tick.cancel()
                    maintenance.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await maintenance
                    if metrics is not None:
                        metrics.close()
                    # Requests being answered get their answer: a write waiting for a peer's
                    # ack fails when the node stops (applied=True, do not write it again),
                    # instead of its client seeing the connection close.
                    control.stop_accepting()
                    await runtime.close()
                mesh.attach(None)

    async def compact_periodically(self, mesh: Mesh) -> None:
        """Fold long update logs into snapshots every `compact_every_s` until stopped."""
        every = self.options.compact_every_s
        if every <= 0:
            return
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=every)
                return
            try:
                removed = await mesh.compact_due()
            except Exception as exc:  # e.g. a full disk: keep serving, try again later
                log.warning("compaction failed, will retry: %s", exc)
                continue
            if removed:
                log.info("compacted update logs: %s rows folded into snapshots", removed)

    def _static_discovery(
        self, bootstrap: tuple[str, ...], transport: WebRtcTransport, tiers: tuple[str, ...]
    ) -> StaticDiscovery | None:
        """Probe the join token's bootstrap addresses (networks without multicast)."""
        own = {(ip, transport.port) for ip in self.options.interfaces}
        addresses = []
        for address in bootstrap:
            try:
                (where,) = parse_bootstrap([address])
            except ValueError as exc:
                log.warning("bootstrap address ignored: %s", exc)
                continue
            if where not in own:
                addresses.append(address)
        if not addresses:
            return None
        runtime = self.runtime
        assert runtime is not None

        def found(peer: StaticPeer) -> None:
            log.info("bootstrap peer %s at %s:%d", peer.node_id, peer.host, peer.port)
            # Tiers are unknown until its Hello: assume ours (a tier it lacks is ignored).
            runtime.peer_found(peer.node_id, peer.host, peer.port, tiers)

        return StaticDiscovery(
            addresses,
            probe=transport.identify,
            on_found=found,
            on_lost=runtime.peer_lost,
            interval_s=STATIC_PROBE_S,
        )

    def _found(self, record: PeerRecord) -> None:
        assert self.runtime is not None
        log.info("discovered %s at %s:%d", record.node_id, record.address, record.port)
        self.runtime.peer_found(record.node_id, record.address, record.port, record.tiers)

    # ----------------------------------------------------------------- control

    def handle(self, request: dict[str, Any]) -> Awaitable[Any]:
        """Serve one control request: a CLI data command, a structured put, status, or peers.

        A structured put reaches the node before this returns (`control_ops.start_put`):
        no event-loop iteration on a CRITICAL write's path. The rest run in `_handle`.
        """
        if request.get("op") == "put":
            assert self.mesh is not None
            return control_ops.start_put(self.mesh, request)
        return self._handle(request)

    async def _handle(self, request: dict[str, Any]) -> Any:
        mesh = self.mesh
        assert mesh is not None
        op = request.get("op")
        if op == "cli":
            argv, cwd = request.get("argv"), request.get("cwd")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("cli request needs argv: a list of strings")
            if not isinstance(cwd, str) or not os.path.isabs(cwd):
                raise ValueError("cli request needs cwd: the client's working directory")
            # Status counts every tier's items: only the status command pays for it.
            status = self.status() if argv[:1] == ["status"] else None
            return await run_in_daemon(mesh, argv, {"status": status}, cwd)
        if op == "status":
            return self.status()
        if op == "peers":
            return self.peers()
        if op in ("stats", "lease", "release"):
            return await self._hub_op(op, request)
        raise ValueError(f"unknown control op {op!r}")

    def status(self) -> dict[str, Any]:
        """Return the node's status (the `memmesh status --json` contract)."""
        mesh, setup, runtime = self.mesh, self.setup, self.runtime
        assert mesh is not None and setup is not None and runtime is not None
        status = mesh.status()
        status.update(
            daemon=True,
            mesh_id=setup.credentials.mesh_id,
            profile=self.profile.value,
            replicated_tiers=list(runtime.node.config.tiers),
            peers=len(runtime.node.links),
            members=len(runtime.node.membership.alive()),
            hub=self.hub_status(),
            is_hub=runtime.node.is_hub,
            uptime_s=round(time.time() - self.started_at, 1),
            bad_frames=runtime.node.counters.bad_frames,
            transfers=[
                {
                    "peer": t.peer_id,
                    "tier": t.tier,
                    "bytes_done": t.bytes_done,
                    "bytes_total": t.bytes_total,
                    "items_total": t.items_total,
                    "items_done": t.items_done,
                }
                for t in runtime.node.transfers()
            ],
        )
        return status

    def hub_status(self) -> dict[str, Any] | None:
        """Return `{"id", "term", "since"}` of the hub this node follows (`since`: Unix time)."""
        runtime = self.runtime
        assert runtime is not None
        hub = runtime.node.hub
        if hub is None:
            return None
        return {"id": hub.id, "term": hub.term, "since": round(runtime.wall_time(hub.since), 3)}

    async def _hub_op(self, op: str, request: dict[str, Any]) -> Any:
        """Serve `stats` (the hub's latest publish), `lease` and `release`."""
        runtime = self.runtime
        assert runtime is not None
        if op == "stats":
            view = runtime.node.mesh_stats()
            if view is None:
                raise ValueError(
                    "no mesh statistics yet: the hub publishes them every "
                    f"{runtime.node.config.hub.stats_interval_s:g} s once one is elected"
                )
            return stats_json(view, runtime.wall_time)
        name = request.get("name")
        if not isinstance(name, str):
            raise ValueError(f"{op} request needs name: a string")
        if op == "release":
            release(runtime, name, int(request.get("token", 0)))
            return None
        timeout_s = float(request.get("timeout_s", 5.0))
        if not 0 < timeout_s <= control_ops.MAX_TIMEOUT_S:  # NaN fails; inf waits for ever
            limit = control_ops.MAX_TIMEOUT_S
            raise ValueError(f"timeout_s must be in (0, {limit:g}], not {timeout_s!r}")
        try:
            lease = await acquire(runtime, name, float(request.get("ttl_s", 0.0)), timeout_s)
        except LeaseError as exc:
            raise ValueError(str(exc)) from None
        return lease.to_json()

    def peers(self) -> list[dict[str, Any]]:
        """Return every known peer (the `memmesh peers --json` contract)."""
        runtime, transport = self.runtime, self.transport
        assert runtime is not None and transport is not None
        links = transport.links()
        rows = []
        hub = runtime.node.hub
        members = runtime.node.membership.members()
        for peer_id in sorted(set(members) | set(links) | set(runtime.addresses)):
            if peer_id == runtime.node.node_id:
                continue
            link = links.get(peer_id)
            where = runtime.addresses.get(peer_id)
            member = members.get(peer_id)
            rows.append(
                {
                    "id": peer_id,
                    "address": getattr(link, "address", None)
                    or (f"{where.address}:{where.port}" if where else ""),
                    "state": getattr(link, "state", "closed") if link else "closed",
                    "member": member.state.name.lower() if member else "unknown",
                    "hub": hub is not None and hub.id == peer_id,
                    "rtt_ms": getattr(link, "rtt_ms", None) if link else None,
                    "bytes_in": getattr(link, "bytes_in", 0) if link else 0,
                    "bytes_out": getattr(link, "bytes_out", 0) if link else 0,
                    "last_sync": {
                        tier: at
                        for (author, tier), at in runtime.stats.last_sync.items()
                        if author == peer_id
                    },
                }
            )
        return rows

    # ----------------------------------------------------------------- metrics

    async def _start_metrics(self) -> asyncio.AbstractServer | None:
        port = self.options.metrics_port
        if port is None:
            return None

        # Any local user can connect: bounded connections, and a text built at most once a
        # second (it counts the live items on the loop), so scrapes cannot starve it.
        clients = 0
        built_at, cached = -math.inf, b""

        def body() -> bytes:
            nonlocal built_at, cached
            now = time.monotonic()
            if now - built_at >= METRICS_CACHE_S:
                built_at, cached = now, self.metrics_text().encode()
            return cached

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal clients
            if clients >= METRICS_MAX_CLIENTS:
                writer.close()
                return
            clients += 1
            try:
                with contextlib.suppress(ConnectionError, TimeoutError, ValueError):
                    async with asyncio.timeout(METRICS_REQUEST_TIMEOUT_S):  # idle clients go
                        await reader.readline()
                        text = body()
                        writer.write(
                            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                            + f"Content-Length: {len(text)}\r\n\r\n".encode()
                            + text
                        )
                        await writer.drain()
            finally:
                clients -= 1
                writer.close()

        return await asyncio.start_server(serve, host="127.0.0.1", port=port)

    def metrics_text(self) -> str:
        """Return Prometheus text exposition of the node's counters."""
        runtime, mesh = self.runtime, self.mesh
        assert runtime is not None and mesh is not None
        counters = runtime.node.counters
        lines = [
            f"memmesh_frames_out_total {counters.frames_out}",
            f"memmesh_bytes_out_total {counters.bytes_out}",
            f"memmesh_frames_in_total {counters.frames_in}",
            f"memmesh_bytes_in_total {counters.bytes_in}",
            f"memmesh_bad_frames_total {counters.bad_frames}",
            f"memmesh_peers {len(runtime.node.links)}",
            f"memmesh_conflicts_detected_total {mesh.memory.stats.conflicts_detected}",
            f"memmesh_is_hub {int(runtime.node.is_hub)}",
        ]
        for tier, count in mesh.memory.counts().items():
            lines.append(f'memmesh_items{{tier="{tier}"}} {count}')
        lines += metrics_lines(runtime.node.mesh_stats())
        return "\n".join(lines) + "\n"


def dump_tasks() -> None:
    """Log the stack of every asyncio task (`kill -USR2 PID`): for a stuck daemon."""
    for task in asyncio.all_tasks():
        stream = io.StringIO()
        task.print_stack(file=stream)
        log.warning("task %s:\n%s", task.get_name(), stream.getvalue())


def run_daemon(options: DaemonOptions) -> None:
    """Run a daemon in this process until SIGINT/SIGTERM."""
    asyncio.run(Daemon(options).serve())
