"""mDNS discovery (python-zeroconf): advertise this node and report peers of the same mesh."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Final

import ifaddr
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discovery.records import PeerRecord

log = logging.getLogger("memmesh.discovery.mdns")

SERVICE_TYPE: Final = "_memmesh._tcp.local."
# PTR/SRV/TXT live 1125 s instead of 75 min: zeroconf receivers raise any shorter PTR TTL to
# 1125 s, so a peer that vanished without a goodbye is reported lost after ~19 min at best.
# Crash detection is SWIM's job; mDNS "lost" is only prompt for a graceful close.
RECORD_TTL_S: Final = 1125
RESOLVE_TIMEOUT_S: Final = 3.0
OTHER_MESH_REMEMBERED: Final = 1024  # names of other meshes' services remembered (bounded)
CONFIRM_ATTEMPTS: Final = 3  # a silent advertised address is asked again this many times
CONFIRM_RETRY_S: Final = 1.0
CONFIRM_RECHECK_S: Final = 30.0  # an advert still silent after those is resolved again then
CONFIRM_RECHECKS_MAX: Final = 256  # names awaiting a recheck at once (adverts are free)
CONFIRM_RECHECKS_PER_NAME: Final = 10  # ... each looked at again at most this often
RECHECK_COUNTS_KEPT: Final = 4 * CONFIRM_RECHECKS_MAX  # names whose rechecks are counted
CONFIRM_CONCURRENCY: Final = 8  # first probes (TCP connections) running at once
RECHECK_CONCURRENCY: Final = 1  # rechecks queue apart, so forged names cannot delay others

# async (host, port) -> the node id that answers there (authenticated), or None.
Confirm = Callable[[str, int], Awaitable[str | None]]


def instance_name(node_id: str) -> str:
    """Return the fully qualified mDNS service instance name of a node."""
    return f"memmesh-{node_id}.{SERVICE_TYPE}"


def _ipv4_of(adapters: Iterable[ifaddr.Adapter]) -> list[tuple[str, int]]:
    """Return (address, prefix length) of every IPv4 address of `adapters`, in order."""
    found: list[tuple[str, int]] = []
    for adapter in adapters:
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and (ip.ip, ip.network_prefix) not in found:
                found.append((ip.ip, ip.network_prefix))
    return found


def default_interfaces() -> list[str]:
    """Return every non-loopback IPv4 address of this machine (the default mDNS interfaces)."""
    return [
        a for a, _ in _ipv4_of(ifaddr.get_adapters()) if not ipaddress.ip_address(a).is_loopback
    ]


def local_networks(interfaces: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """Return the IPv4 networks that the given interface addresses belong to."""
    chosen = set(interfaces)
    return [
        ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
        for address, prefix in _ipv4_of(ifaddr.get_adapters())
        if address in chosen
    ]


def pick_address(addresses: Sequence[str], networks: Sequence[ipaddress.IPv4Network]) -> str:
    """Return the first address on one of our networks, else the first (newest) address."""
    for address in addresses:
        ip = ipaddress.IPv4Address(address)
        if any(ip in network for network in networks):
            return address
    return addresses[0]


class MdnsDiscovery:
    """Advertises `me` as `_memmesh._tcp.local.` and browses for peers of the same mesh."""

    def __init__(
        self,
        me: PeerRecord,
        *,
        interfaces: Sequence[str] | None = None,
        on_found: Callable[[PeerRecord], None],
        on_lost: Callable[[str], None],
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
        confirm: Confirm | None = None,
    ) -> None:
        """Prepare discovery; nothing is sent until `start` (or `async with`).

        mDNS adverts are not authenticated: anyone on the LAN can advertise a member's
        (public) node id at an address of its own. With `confirm`, an advert is reported
        only once the node at its address proves that id (the daemon passes the
        transport's signed `hello` exchange); adverts it contradicts are ignored and
        counted (`ignored_unconfirmed`).
        """
        for address in interfaces or ():
            ipaddress.IPv4Address(address)  # raises ValueError for a non-IPv4 interface
        self._me = me
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._on_found = on_found
        self._on_lost = on_lost
        self._resolve_timeout_ms = resolve_timeout_s * 1000.0
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._networks: list[ipaddress.IPv4Network] = []
        self._peers: dict[str, PeerRecord] = {}
        self._names: dict[str, str] = {}  # service name -> node id reported found
        self._resolving: dict[str, asyncio.Task[None]] = {}
        # Names of services of another mesh, oldest first, at most OTHER_MESH_REMEMBERED (a
        # stranger can advertise any number of them); `ignored_other_mesh` counts them.
        self._other_mesh: dict[str, None] = {}
        self._other_mesh_count = 0
        self._registered = False
        self._confirm = confirm
        self._probes = asyncio.Semaphore(CONFIRM_CONCURRENCY)
        self._recheck_probes = asyncio.Semaphore(RECHECK_CONCURRENCY)
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        self._recheck_counts: dict[str, int] = {}  # at most RECHECK_COUNTS_KEPT, oldest out
        self.ignored_invalid = 0
        self.ignored_unconfirmed = 0
        self._closed = False

    @property
    def me(self) -> PeerRecord:
        """Return the record this node advertises."""
        return self._me

    @property
    def interfaces(self) -> list[str]:
        """Return the IPv4 addresses mDNS binds to (the defaults are filled in by `start`)."""
        return list(self._interfaces or ())

    @property
    def ignored_other_mesh(self) -> int:
        """Return how many distinct services of another mesh were ignored so far.

        Exact up to OTHER_MESH_REMEMBERED names; past that a forgotten one counts again.
        """
        return self._other_mesh_count

    def peers(self) -> dict[str, PeerRecord]:
        """Return the peers currently seen, by node id."""
        return dict(self._peers)

    async def __aenter__(self) -> MdnsDiscovery:
        """Start browsing and register our service (returns after probing, ~1.2 s)."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Send goodbyes and close."""
        await self.close()

    async def start(self) -> None:
        """Bind to the interfaces, start the browser, then register (probe + announce)."""
        if self._azc is not None or self._closed:
            raise RuntimeError("MdnsDiscovery can be started only once")
        if self._interfaces is None:
            self._interfaces = default_interfaces()
        if not self._interfaces:
            raise RuntimeError("no non-loopback IPv4 interface for mDNS; pass interfaces=[IP]")
        self._networks = local_networks(self._interfaces)
        self._azc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        try:
            self._browser = AsyncServiceBrowser(
                self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change]
            )
            self._info = self._service_info(self._me)
            await self._azc.async_register_service(self._info)
            self._registered = True
        except BaseException:
            await self.close()
            raise

    async def update(self, me: PeerRecord) -> None:
        """Re-advertise with a changed record (e.g. new port); the node id must stay the same."""
        if me.node_id != self._me.node_id:
            raise ValueError("update() cannot change the node id")
        if self._azc is None or self._info is None:
            raise RuntimeError("MdnsDiscovery is not started")
        self._me = me
        self._info = self._service_info(me)
        await self._azc.async_update_service(self._info)

    async def close(self) -> None:
        """Stop the browser, unregister our service (goodbye packets) and close the sockets."""
        if self._closed:
            return
        self._closed = True
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        azc, self._azc = self._azc, None
        if azc is None:
            return
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
                self._browser = None
            if self._registered and self._info is not None:
                goodbyes = await azc.async_unregister_service(self._info)
                await goodbyes
        except Exception:
            log.exception("mDNS unregister failed")
        finally:
            await azc.async_close()

    def _service_info(self, me: PeerRecord) -> ServiceInfo:
        """Build the ServiceInfo advertising `me` (on our interfaces if its address is 0.0.0.0)."""
        specific = me.address != "0.0.0.0"
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(me.node_id),
            port=me.port,
            properties=me.to_txt(),
            server=f"memmesh-{me.node_id}.local.",
            other_ttl=RECORD_TTL_S,
            parsed_addresses=[me.address] if specific else list(self._interfaces or ()),
        )

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Handle a browser event (runs in the event loop)."""
        if self._closed or name.lower() == instance_name(self._me.node_id).lower():
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            recheck = self._rechecks.pop(name, None)
            if recheck is not None:
                recheck.cancel()
            self._forget(name)
            return
        self._start_resolve(name)

    def _start_resolve(self, name: str, *, recheck: bool = False) -> None:
        """Resolve `name` in a task of its own, tracked in `_resolving` until it ends."""
        task = asyncio.get_running_loop().create_task(self._resolve(name, recheck=recheck))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._resolved(name, done))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        """Drop a finished resolve task (unless a newer one replaced it)."""
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, name: str, *, recheck: bool = False) -> None:
        """Fetch SRV/TXT/A of `name` and report the peer if it is new or changed."""
        if self._azc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._azc.zeroconf, self._resolve_timeout_ms):
            log.debug("mDNS: %s did not resolve in time", name)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            log.debug("mDNS: %s has no IPv4 address or port", name)
            return
        try:
            record = PeerRecord.from_txt(
                info.properties, pick_address(addresses, self._networks), info.port
            )
        except ValueError as exc:
            self.ignored_invalid += 1
            log.info("mDNS: ignoring %s: %s", name, exc)
            return
        if record.node_id == self._me.node_id:
            log.warning("mDNS: %s advertises our own node id", name)
            return
        if record.mesh_id != self._me.mesh_id:
            if name not in self._other_mesh:
                self._other_mesh_count += 1
                self._other_mesh[name] = None
                if len(self._other_mesh) > OTHER_MESH_REMEMBERED:
                    del self._other_mesh[next(iter(self._other_mesh))]
            self._forget(name)  # in case it was of our mesh before
            return
        if self._peers.get(record.node_id) == record and self._names.get(name) == record.node_id:
            return
        if self._confirm is not None and not await self._confirmed(name, record, recheck):
            return
        old_id = self._names.get(name)
        if old_id is not None and old_id != record.node_id:
            self._forget(name)
        self._names[name] = record.node_id
        if self._peers.get(record.node_id) == record:
            return
        self._peers[record.node_id] = record
        try:
            self._on_found(record)
        except Exception:
            log.exception("on_found callback failed")

    async def _confirmed(self, name: str, record: PeerRecord, recheck: bool = False) -> bool:
        """Return whether the node at the advertised address proves the advertised id.

        A first look tries CONFIRM_ATTEMPTS times; a recheck once, in its own queue.
        """
        assert self._confirm is not None
        probes = self._recheck_probes if recheck else self._probes
        for attempt in range(1 if recheck else CONFIRM_ATTEMPTS):
            if attempt:
                await asyncio.sleep(CONFIRM_RETRY_S)
            try:
                async with probes:
                    answered = await self._confirm(record.address, record.port)
            except Exception as exc:  # a probe that fails counts as no answer
                log.debug("mDNS: confirming %s failed: %r", name, exc)
                answered = None
            if answered == record.node_id:
                self._recheck_counts.pop(name, None)
                return True
            if answered is not None:
                break  # another node answers there: not worth asking again
        self.ignored_unconfirmed += 1
        if answered is None:
            # Silent (busy, or not listening yet): zeroconf reports no change for an advert
            # that stays the same, so look again later rather than never.
            self._recheck_later(name)
        log.log(
            logging.DEBUG if recheck else logging.WARNING,
            "mDNS: ignoring %s: %s:%d does not answer as %s (%s)",
            name,
            record.address,
            record.port,
            record.node_id,
            "no answer" if answered is None else f"answered as {answered}",
        )
        return False

    def _recheck_later(self, name: str) -> None:
        """Resolve `name` again after CONFIRM_RECHECK_S (bounded per name and in all)."""
        done = self._recheck_counts.get(name, 0)
        if name in self._rechecks or done >= CONFIRM_RECHECKS_PER_NAME:
            return
        if len(self._rechecks) >= CONFIRM_RECHECKS_MAX:
            return
        if name not in self._recheck_counts and len(self._recheck_counts) >= RECHECK_COUNTS_KEPT:
            self._recheck_counts.pop(next(iter(self._recheck_counts)))
        self._recheck_counts[name] = done + 1

        def recheck() -> None:
            self._rechecks.pop(name, None)
            if self._closed or name in self._resolving:
                return
            self._start_resolve(name, recheck=True)

        self._rechecks[name] = asyncio.get_running_loop().call_later(CONFIRM_RECHECK_S, recheck)

    def _forget(self, name: str) -> None:
        """Report the peer behind `name` lost, if we had reported it found."""
        node_id = self._names.pop(name, None)
        if node_id is None or node_id in self._names.values():
            return
        self._peers.pop(node_id, None)
        try:
            self._on_lost(node_id)
        except Exception:
            log.exception("on_lost callback failed")
