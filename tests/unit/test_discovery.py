"""Discovery adapters without a network: TXT records, bootstrap parsing, static probing."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

from discovery import mdns
from discovery.mdns import MdnsDiscovery, instance_name, pick_address
from discovery.records import PeerRecord
from discovery.static import StaticDiscovery, StaticPeer, parse_bootstrap

NODE = "0123456789abcdef"
MESH = "fedcba9876543210"


def record(**changes: object) -> PeerRecord:
    fields: dict[str, object] = {
        "node_id": NODE,
        "mesh_id": MESH,
        "address": "10.77.0.1",
        "port": 7000,
        "protocol_version": 2,
        "tiers": ("L1", "L3"),
        "profile": "desktop",
        "hub_eligible": False,
    }
    fields.update(changes)
    return PeerRecord(**fields)  # type: ignore[arg-type]


# --- PeerRecord -------------------------------------------------------------------------


def test_txt_is_short_string_keys_and_values() -> None:
    assert record().to_txt() == {
        "id": NODE,
        "mesh": MESH,
        "v": "2",
        "sig": "7000",
        "tiers": "L1,L3",
        "prof": "desktop",
        "hub": "0",
    }


@pytest.mark.parametrize(
    "original",
    [record(), record(hub_eligible=True, tiers=("L2",), profile="", port=65535)],
)
def test_txt_round_trip_as_str_and_as_zeroconf_bytes(original: PeerRecord) -> None:
    txt = original.to_txt()
    assert PeerRecord.from_txt(txt, original.address, 1) == original
    as_bytes = {k.encode(): v.encode() for k, v in txt.items()}
    assert PeerRecord.from_txt(as_bytes, original.address, 1) == original


def test_from_txt_takes_the_srv_port_when_sig_is_absent() -> None:
    txt = record().to_txt()
    del txt["sig"]
    assert PeerRecord.from_txt(txt, "10.77.0.1", 7100).port == 7100


def test_from_txt_ignores_unknown_keys() -> None:
    txt: dict[str, str | None] = {**record().to_txt(), "future": "x", "flag": None}
    assert PeerRecord.from_txt(txt, "10.77.0.1", 7000) == record()


@pytest.mark.parametrize("missing", ["id", "mesh", "v", "tiers", "prof", "hub"])
def test_from_txt_rejects_a_missing_key(missing: str) -> None:
    txt = record().to_txt()
    del txt[missing]
    with pytest.raises(ValueError, match=repr(missing)):
        PeerRecord.from_txt(txt, "10.77.0.1", 7000)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", "0123"),  # too short
        ("id", "0123456789ABCDEF"),  # not lowercase hex
        ("id", "0123456789abcdeg"),
        ("mesh", ""),
        ("v", "two"),
        ("v", "²"),
        ("sig", "0"),
        ("sig", "70000"),
        ("sig", "-1"),
        ("tiers", ""),
        ("tiers", "L1,L4"),
        ("tiers", "L1,L1"),
        ("tiers", "l1"),
        ("hub", "yes"),
        ("prof", "x" * 33),
        ("prof", "has space"),
    ],
)
def test_from_txt_rejects_an_invalid_value(key: str, value: str) -> None:
    txt = {**record().to_txt(), key: value}
    with pytest.raises(ValueError):
        PeerRecord.from_txt(txt, "10.77.0.1", 7000)


@pytest.mark.parametrize(
    "props",
    [
        {b"id": None},
        {b"id": b"\xff\xfe"},
        {b"id": b"0" * 300},
    ],
)
def test_from_txt_rejects_absent_or_undecodable_bytes(props: dict[bytes, bytes | None]) -> None:
    txt = {k.encode(): v.encode() for k, v in record().to_txt().items()}
    with pytest.raises(ValueError):
        PeerRecord.from_txt({**txt, **props}, "10.77.0.1", 7000)


@pytest.mark.parametrize("address", ["", "::1", "10.77.0", "host.local"])
def test_from_txt_rejects_a_non_ipv4_address(address: str) -> None:
    with pytest.raises(ValueError, match="IPv4"):
        PeerRecord.from_txt(record().to_txt(), address, 7000)


def test_record_fields_are_validated_on_construction() -> None:
    with pytest.raises(ValueError):
        record(port=0)
    with pytest.raises(ValueError):
        record(tiers=["L1"])
    with pytest.raises(ValueError):
        record(hub_eligible=1)


# --- mDNS helpers (the network part is tests/integration/test_mdns.py) ----------------------


def test_instance_name_derives_from_the_node_id() -> None:
    assert instance_name(NODE) == f"memmesh-{NODE}._memmesh._tcp.local."


def test_pick_address_prefers_our_network_then_the_newest() -> None:
    ours = [ipaddress.IPv4Network("10.77.0.0/24")]
    assert pick_address(["192.168.9.9", "10.77.0.5"], ours) == "10.77.0.5"
    assert pick_address(["192.168.9.9", "172.16.0.1"], ours) == "192.168.9.9"


def test_mdns_rejects_a_non_ipv4_interface() -> None:
    with pytest.raises(ValueError):
        MdnsDiscovery(record(), interfaces=["::1"], on_found=print, on_lost=print)


async def test_mdns_without_an_interface_fails_clearly_and_closes() -> None:
    discovery = MdnsDiscovery(record(), interfaces=[], on_found=print, on_lost=print)
    with pytest.raises(RuntimeError, match="interface"):
        await discovery.start()
    await discovery.close()
    assert discovery.peers() == {}


# --- parse_bootstrap --------------------------------------------------------------------


def test_parse_bootstrap_accepts_ipv4_names_and_bracketed_ipv6() -> None:
    assert parse_bootstrap(["10.0.0.1:7000", " hub.lan:7001 ", "[fe80::1]:7002"]) == [
        ("10.0.0.1", 7000),
        ("hub.lan", 7001),
        ("fe80::1", 7002),
    ]


def test_parse_bootstrap_drops_duplicates_keeping_order() -> None:
    assert parse_bootstrap(["b:2", "a:1", "b:2"]) == [("b", 2), ("a", 1)]
    assert parse_bootstrap([]) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.1", "HOST:PORT"),
        (":7000", "HOST:PORT"),
        ("10.0.0.1:", "port must be 1-65535"),
        ("10.0.0.1:0", "port must be 1-65535"),
        ("10.0.0.1:65536", "port must be 1-65535"),
        ("10.0.0.1:x", "port must be 1-65535"),
        ("10.0.0.1:٣", "port must be 1-65535"),
        ("10.0.0.300:7000", "not IPv4"),
        ("fe80::1:7000", r"\[ADDR\]:PORT"),
        ("[fe80::1]7000", r"\[IPv6\]:PORT"),
        ("[nothex]:7000", "not IPv6"),
        ("bad_host:7000", "not a host name"),
        ("-x:7000", "not a host name"),
    ],
)
def test_parse_bootstrap_rejects_bad_entries_naming_them(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_bootstrap([entry])
    assert repr(entry) in str(caught.value)


def test_parse_bootstrap_rejects_a_bare_string() -> None:
    with pytest.raises(ValueError, match="list"):
        parse_bootstrap("10.0.0.1:7000")


# --- StaticDiscovery with a fake probe -----------------------------------------------------


class FakeNetwork:
    """Answers probes from a table of who listens where; records every probe."""

    def __init__(self) -> None:
        self.listening: dict[tuple[str, int], str] = {}
        self.hanging: set[tuple[str, int]] = set()
        self.probes: list[tuple[str, int]] = []

    async def probe(self, host: str, port: int) -> str | None:
        self.probes.append((host, port))
        if (host, port) in self.hanging:
            await asyncio.sleep(3600)
        if (host, port) == ("boom", 1):
            raise ConnectionRefusedError("refused")
        return self.listening.get((host, port))


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []

    def found(self, peer: StaticPeer) -> None:
        self.log.append(("found", peer))

    def lost(self, node_id: str) -> None:
        self.log.append(("lost", node_id))


def static(net: FakeNetwork, events: Events, addresses: list[str], **kw: float) -> StaticDiscovery:
    return StaticDiscovery(
        addresses, probe=net.probe, on_found=events.found, on_lost=events.lost, **kw
    )


async def test_static_reports_found_once_then_lost_then_found_again() -> None:
    net, events = FakeNetwork(), Events()
    discovery = static(net, events, ["10.0.0.1:7000", "10.0.0.2:7000"])
    net.listening[("10.0.0.1", 7000)] = "aaaa"
    await discovery.poll_once()
    await discovery.poll_once()
    assert events.log == [("found", StaticPeer("aaaa", "10.0.0.1", 7000))]
    assert discovery.peers() == {"aaaa": StaticPeer("aaaa", "10.0.0.1", 7000)}

    net.listening[("10.0.0.2", 7000)] = "bbbb"
    del net.listening[("10.0.0.1", 7000)]
    await discovery.poll_once()
    assert events.log[1:] == [("lost", "aaaa"), ("found", StaticPeer("bbbb", "10.0.0.2", 7000))]

    net.listening[("10.0.0.1", 7000)] = "aaaa"
    await discovery.poll_once()
    assert events.log[3:] == [("found", StaticPeer("aaaa", "10.0.0.1", 7000))]
    assert set(discovery.peers()) == {"aaaa", "bbbb"}


async def test_static_reports_a_new_node_at_the_same_address() -> None:
    net, events = FakeNetwork(), Events()
    discovery = static(net, events, ["10.0.0.1:7000"])
    net.listening[("10.0.0.1", 7000)] = "aaaa"
    await discovery.poll_once()
    net.listening[("10.0.0.1", 7000)] = "cccc"
    await discovery.poll_once()
    assert events.log[1:] == [("lost", "aaaa"), ("found", StaticPeer("cccc", "10.0.0.1", 7000))]


async def test_static_node_at_two_addresses_is_lost_only_when_both_stop() -> None:
    net, events = FakeNetwork(), Events()
    discovery = static(net, events, ["10.0.0.1:7000", "10.0.1.1:7000"])
    net.listening = {("10.0.0.1", 7000): "aaaa", ("10.0.1.1", 7000): "aaaa"}
    await discovery.poll_once()
    del net.listening[("10.0.0.1", 7000)]
    await discovery.poll_once()
    assert [kind for kind, _ in events.log] == ["found"]
    net.listening.clear()
    await discovery.poll_once()
    assert events.log[1:] == [("lost", "aaaa")]


async def test_static_probe_errors_and_timeouts_count_as_no_answer() -> None:
    net, events = FakeNetwork(), Events()
    discovery = static(net, events, ["boom:1", "slow:2", "ok:3"], probe_timeout_s=0.05)
    net.hanging.add(("slow", 2))
    net.listening[("ok", 3)] = "dddd"
    await asyncio.wait_for(discovery.poll_once(), 2.0)
    assert events.log == [("found", StaticPeer("dddd", "ok", 3))]


async def test_static_callback_failure_does_not_stop_probing() -> None:
    net = FakeNetwork()

    def explode(peer: StaticPeer) -> None:
        raise RuntimeError("callback bug")

    discovery = StaticDiscovery(["a:1"], probe=net.probe, on_found=explode, on_lost=print)
    net.listening[("a", 1)] = "aaaa"
    await discovery.poll_once()
    assert set(discovery.peers()) == {"aaaa"}


async def test_static_async_with_probes_periodically_and_stops_on_exit() -> None:
    net, events = FakeNetwork(), Events()
    net.listening[("a", 1)] = "aaaa"
    async with static(net, events, ["a:1"], interval_s=0.01) as discovery:
        for _ in range(200):
            if len(net.probes) >= 3:
                break
            await asyncio.sleep(0.01)
        assert discovery.peers() == {"aaaa": StaticPeer("aaaa", "a", 1)}
    assert len(net.probes) >= 3
    count = len(net.probes)
    await asyncio.sleep(0.05)
    assert len(net.probes) == count
    assert events.log == [("found", StaticPeer("aaaa", "a", 1))]


def test_static_needs_a_probe_and_valid_settings() -> None:
    with pytest.raises(ValueError, match="probe"):
        StaticDiscovery(["a:1"], on_found=print, on_lost=print)
    with pytest.raises(ValueError, match="positive"):
        StaticDiscovery(
            ["a:1"], probe=FakeNetwork().probe, on_found=print, on_lost=print, interval_s=0
        )
    with pytest.raises(ValueError, match="HOST:PORT"):
        StaticDiscovery(["a"], probe=FakeNetwork().probe, on_found=print, on_lost=print)


class _ForeignAdvert:
    """Stands in for zeroconf's AsyncServiceInfo: every name resolves to another mesh."""

    def __init__(self, service_type: str, name: str) -> None:
        self.name = name
        self.port = 4000
        self.properties = {
            b"id": b"00000000000000aa", b"mesh": b"ffffffffffffffff", b"v": b"2",
            b"hub": b"1", b"tiers": b"L1", b"prof": b"x",
        }  # fmt: skip

    async def async_request(self, zeroconf: object, timeout_ms: float) -> bool:
        return True

    def parsed_addresses(self, version: object) -> list[str]:
        return ["192.0.2.9"]


def _unresolved_discovery(
    on_found: Callable[[PeerRecord], object] = print,
    confirm: Callable[[str, int], Awaitable[str | None]] | None = None,
) -> MdnsDiscovery:
    """An MdnsDiscovery for node 0123456789abcdef with a stand-in zeroconf (nothing is sent)."""
    me = PeerRecord("0123456789abcdef", "1111111111111111", "192.0.2.2", 5000)
    discovery = MdnsDiscovery(
        me, interfaces=["192.0.2.2"], on_found=on_found, on_lost=print, confirm=confirm
    )
    discovery._azc = SimpleNamespace(zeroconf=None)  # type: ignore[assignment]
    return discovery


async def test_adverts_of_other_meshes_are_counted_in_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mdns, "AsyncServiceInfo", _ForeignAdvert)
    monkeypatch.setattr(mdns, "OTHER_MESH_REMEMBERED", 50)
    discovery = _unresolved_discovery()
    for i in range(500):
        await discovery._resolve(f"memmesh-x{i}.{mdns.SERVICE_TYPE}")
    await discovery._resolve(f"memmesh-x499.{mdns.SERVICE_TYPE}")  # seen again: not recounted
    assert discovery.ignored_other_mesh == 500
    assert len(discovery._other_mesh) == 50


class _MemberAdvert(_ForeignAdvert):
    """An advert of our mesh for node 00000000000000aa at 192.0.2.9:4000."""

    def __init__(self, service_type: str, name: str) -> None:
        super().__init__(service_type, name)
        self.properties = {**self.properties, b"mesh": b"1111111111111111"}


@pytest.mark.parametrize(
    ("answers", "reported"),
    [
        (["00000000000000aa"], True),  # the advertised node answers there
        ([None, "00000000000000aa"], True),  # silent at first, then answers
        (["00000000000000bb"], False),  # another node's address: a hijack attempt
        ([None, None, None], False),  # nobody answers
    ],
)
async def test_an_advert_is_reported_only_once_its_address_proves_the_node_id(
    monkeypatch: pytest.MonkeyPatch, answers: list[str | None], reported: bool
) -> None:
    monkeypatch.setattr(mdns, "AsyncServiceInfo", _MemberAdvert)
    monkeypatch.setattr(mdns, "CONFIRM_RETRY_S", 0.0)
    asked: list[tuple[str, int]] = []

    async def confirm(host: str, port: int) -> str | None:
        asked.append((host, port))
        return answers[len(asked) - 1]

    found: list[PeerRecord] = []
    discovery = _unresolved_discovery(found.append, confirm)
    await discovery._resolve(f"memmesh-00000000000000aa.{mdns.SERVICE_TYPE}")
    assert asked[0] == ("192.0.2.9", 4000) and len(asked) == len(answers)
    assert [r.node_id for r in found] == (["00000000000000aa"] if reported else [])
    assert discovery.ignored_unconfirmed == (0 if reported else 1)


async def test_an_advert_silent_at_first_is_looked_at_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: three silent tries dropped an advert for good (zeroconf reports no
    change for an advert that stays the same)."""
    monkeypatch.setattr(mdns, "AsyncServiceInfo", _MemberAdvert)
    monkeypatch.setattr(mdns, "CONFIRM_RETRY_S", 0.0)
    monkeypatch.setattr(mdns, "CONFIRM_RECHECK_S", 0.05)
    answers = iter([None, None, None, "00000000000000aa"])

    async def confirm(host: str, port: int) -> str | None:
        return next(answers)

    found: list[PeerRecord] = []
    discovery = _unresolved_discovery(found.append, confirm)
    await discovery._resolve(f"memmesh-00000000000000aa.{mdns.SERVICE_TYPE}")
    assert found == [] and discovery.ignored_unconfirmed == 1
    for _ in range(100):
        if found:
            break
        await asyncio.sleep(0.01)
    assert [r.node_id for r in found] == ["00000000000000aa"]


async def test_confirm_probes_run_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mdns, "AsyncServiceInfo", _MemberAdvert)
    running, most = [0], [0]

    async def confirm(host: str, port: int) -> str | None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1
        return "00000000000000aa"

    discovery = _unresolved_discovery(print, confirm)
    names = [f"memmesh-x{i}.{mdns.SERVICE_TYPE}" for i in range(40)]
    await asyncio.gather(*(discovery._resolve(n) for n in names))
    assert 1 <= most[0] <= mdns.CONFIRM_CONCURRENCY


async def test_rechecks_of_silent_adverts_do_not_hold_up_a_first_confirmation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: forged silent adverts were rechecked forever in the same queue as
    first looks, delaying a genuine member's confirmation by minutes."""
    monkeypatch.setattr(mdns, "CONFIRM_RETRY_S", 0.0)
    monkeypatch.setattr(mdns, "CONFIRM_RECHECK_S", 0.0)
    genuine_id = "00000000000000ff"

    class _Advert(_MemberAdvert):  # node id from the name; the genuine one on port 5000
        def __init__(self, service_type: str, name: str) -> None:
            super().__init__(service_type, name)
            node_id = name[8:24]
            self.properties = {**self.properties, b"id": node_id.encode()}
            self.port = 5000 if node_id == genuine_id else 4000

    monkeypatch.setattr(mdns, "AsyncServiceInfo", _Advert)
    hang = asyncio.Event()
    answers = {"silent": True}

    async def confirm(host: str, port: int) -> str | None:
        if port == 5000:
            return genuine_id
        if answers["silent"]:
            return None
        await hang.wait()  # rechecks of the forged ones hang
        return None

    found: list[PeerRecord] = []
    discovery = _unresolved_discovery(found.append, confirm)
    for i in range(1, 21):
        await discovery._resolve(f"memmesh-{i:016x}.{mdns.SERVICE_TYPE}")  # rechecks armed
    answers["silent"] = False
    await asyncio.sleep(0.05)  # the rechecks start, and hang
    await asyncio.wait_for(discovery._resolve(f"memmesh-{genuine_id}.{mdns.SERVICE_TYPE}"), 5)
    assert [r.node_id for r in found] == [genuine_id]
    hang.set()
    discovery._azc = None  # nothing real to close: stop the rechecks
    await discovery.close()
