"""A throwaway LAN of network namespaces for integration tests: real hosts, real sockets.

One namespace holds a bridge; every host is a namespace joined to it by a veth pair and
gets an address in 10.77.X.0/24, which exists only inside these namespaces. Everything
created is removed by `close()`, also when a test fails. Root is required.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class NetlabUnavailable(RuntimeError):
    """Namespaces cannot be created here (not root, or no iproute2)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> str | None:
    """Return None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


@dataclass
class Host:
    """One namespace on the lab LAN."""

    name: str
    netns: str
    address: str
    veth: str  # host-side end (inside the bridge namespace)

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside this host's namespace."""
        return subprocess.Popen(self.cmd(argv), **kwargs)  # type: ignore[call-overload, no-any-return]


@dataclass
class Netlab:
    """A bridge namespace plus hosts; use as a context manager."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: int = 77
    hosts: list[Host] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        """Return the name of the namespace that holds the bridge."""
        return f"mm-{self.tag}-br"

    def __enter__(self) -> Netlab:
        """Create the bridge namespace."""
        reason = available()
        if reason is not None:
            raise NetlabUnavailable(reason)
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove every process, link and namespace this lab created."""
        self.close()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self) -> Host:
        """Create one more host joined to the bridge and return it."""
        index = len(self.hosts) + 1
        ns = f"mm-{self.tag}-h{index}"
        veth = f"v{self.tag}{index}"
        self._add_ns(ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        _ip("link", "set", veth, "netns", self.bridge_ns)
        _ip("link", "set", f"{veth}p", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", veth, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", veth, "up")
        _ip("-n", ns, "link", "set", f"{veth}p", "name", "eth0")
        address = f"10.{self.subnet}.0.{index}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        # mDNS needs a multicast route on the host's only interface.
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        host = Host(f"h{index}", ns, address, veth)
        self.hosts.append(host)
        return host

    def cut(self, host: Host) -> None:
        """Partition `host` from everyone (its bridge port goes down)."""
        _ip("-n", self.bridge_ns, "link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        """Heal the partition of `host`."""
        _ip("-n", self.bridge_ns, "link", "set", host.veth, "up")

    def block_multicast(self, host: Host) -> None:
        """Stop the bridge flooding multicast (mDNS) out of `host`'s port: it hears none."""
        _ip("-n", self.bridge_ns, "link", "set", "dev", host.veth, "type", "bridge_slave",
            "mcast_flood", "off")  # fmt: skip

    def spawn(self, host: Host, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process in `host` that `close()` will kill if it is still running."""
        process = host.popen(argv, **kwargs)
        self._processes.append(process)
        return process

    def close(self) -> None:
        """Kill spawned processes, then delete every namespace (veths go with them)."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._processes.clear()
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()


@contextlib.contextmanager
def lab(hosts: int) -> Iterator[Netlab]:
    """Yield a lab with `hosts` hosts on one bridge, torn down afterwards."""
    with Netlab() as net:
        for _ in range(hosts):
            net.add_host()
        yield net
