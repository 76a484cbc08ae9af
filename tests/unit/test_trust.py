"""Behavioural tests for mesh membership trust: join tokens and sealed signaling messages."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace

import pytest

from mesh import trust
from mesh.identity import NodeIdentity
from mesh.trust import (
    JoinToken,
    MeshCredentials,
    SignalingMessage,
    SignalingRefused,
    SignalingVerifier,
    TokenError,
    TrustError,
    dtls_fingerprints,
    mesh_id_for,
    seal,
)

FP256 = (
    "sha-256 F3:B5:0A:B9:6A:5A:06:44:DB:2A:35:F4:D5:AF:1A:0F:"
    "19:7A:F3:7E:AE:DE:17:EB:39:1C:BB:87:61:AF:75:0C"
)
FP384 = (
    "sha-384 57:B5:37:DC:D0:BF:59:4E:B2:D7:39:DB:86:C6:E5:46:D7:2B:A0:FE:12:B6:9C:95:"
    "F4:76:49:66:6E:FA:60:E2:18:21:2E:A1:6E:F6:70:93:02:AD:C9:DE:00:28:54:43"
)
SDP = (
    "v=0\r\no=- 4004450551 4004450551 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=msid-semantic:WMS *\r\n"
    "m=application 55200 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 192.0.2.2\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 55200 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:4wI7\r\na=ice-pwd:79AGpkNe6yRLfOzalFFDrk\r\n"
    f"a=fingerprint:{FP256}\r\na=fingerprint:{FP384}\r\na=setup:actpass\r\n"
)
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
CREDS = MeshCredentials(SECRET)
ALICE = NodeIdentity.from_seed(b"\x01" * 32)
BOB = NodeIdentity.from_seed(b"\x02" * 32)
MALLORY = NodeIdentity.from_seed(b"\x03" * 32)
NOW = 1_700_000_000_000


def offer(who: NodeIdentity = ALICE, **changes: object) -> SignalingMessage:
    """A valid offer from who to Bob in CREDS' mesh, with fields overridden by changes."""
    msg = SignalingMessage(
        kind="offer",
        sender=who.node_id,
        recipient=BOB.node_id,
        mesh_id=CREDS.mesh_id,
        public_key=who.public_key_hex,
        timestamp_ms=NOW,
        nonce="ab" * 16,
        sdp=SDP,
        fingerprint=FP256,
        tiers=("hot", "warm"),
        profile="laptop",
    )
    return replace(msg, **changes)  # type: ignore[arg-type]


def forge(msg: SignalingMessage, identity: NodeIdentity, secret: bytes) -> bytes:
    """Seal msg with no consistency checks, as an attacker holding identity and secret would."""
    return trust._seal_unchecked(trust._fields(msg), identity, secret)


def refusal(verifier: SignalingVerifier, data: bytes, now_ms: int = NOW) -> str:
    """Return the refusal reason for data, failing the test if it verifies."""
    with pytest.raises(SignalingRefused) as info:
        verifier.verify(data, now_ms)
    return info.value.reason


@pytest.fixture
def bob() -> SignalingVerifier:
    return SignalingVerifier(CREDS, self_id=BOB.node_id)


def test_round_trip(bob: SignalingVerifier) -> None:
    msg = offer()
    data = seal(msg, ALICE, CREDS)
    assert json.loads(data)["sdp"] == SDP
    assert bob.verify(data, NOW + 29_000) == msg
    assert sum(bob.refusals.values()) == 0


def test_mesh_id_is_derived_and_hides_the_secret() -> None:
    mid = mesh_id_for(SECRET)
    assert len(mid) == 16 and int(mid, 16) >= 0
    assert mid == CREDS.mesh_id
    assert mid != mesh_id_for(OTHER_SECRET)
    assert mid not in SECRET.hex()
    with pytest.raises(ValueError):
        mesh_id_for(b"short")


def test_credentials_validation() -> None:
    with pytest.raises(ValueError):
        MeshCredentials(b"x" * 31)
    creds = MeshCredentials(SECRET, frozenset({ALICE.public_key_hex.upper()}))
    assert creds.allowlist == frozenset({ALICE.public_key_hex})
    with pytest.raises(ValueError):
        MeshCredentials(SECRET, frozenset({ALICE.node_id}))
    assert SECRET.hex() not in repr(creds)


def test_other_mesh_is_wrong_mesh(bob: SignalingVerifier) -> None:
    other = MeshCredentials(OTHER_SECRET)
    data = seal(offer(mesh_id=other.mesh_id), ALICE, other)
    assert refusal(bob, data) == "wrong-mesh"


def test_forged_mesh_id_without_the_secret_is_bad_mac(bob: SignalingVerifier) -> None:
    # The attacker saw our mesh id on mDNS but holds another token's secret.
    assert refusal(bob, forge(offer(), ALICE, OTHER_SECRET)) == "bad-mac"


def test_tampered_sdp_after_sealing(bob: SignalingVerifier) -> None:
    data = seal(offer(), ALICE, CREDS)
    tampered = data.replace(b"192.0.2.2 55200", b"192.0.2.9 55200")
    assert tampered != data
    assert refusal(bob, tampered) == "bad-mac"
    # A mesh member can recompute the MAC, but not Alice's signature.
    fields = json.loads(tampered)
    body = trust._canonical({k: fields[k] for k in trust._FIELDS})
    fields["mac"] = trust._mac(SECRET, body, bytes.fromhex(fields["sig"])).hex()
    assert refusal(bob, trust._canonical(fields)) == "bad-signature"
    assert bob.verify(data, NOW) == offer()  # the tampering did not burn the nonce


def test_member_impersonating_alice(bob: SignalingVerifier) -> None:
    # Mallory keeps Alice's sender id but swaps in her own key and signature.
    swapped = offer(public_key=MALLORY.public_key_hex)
    assert refusal(bob, forge(swapped, MALLORY, SECRET)) == "id-mismatch"
    # Keeping Alice's key too, she can only sign with her own.
    assert refusal(bob, forge(offer(), MALLORY, SECRET)) == "bad-signature"


def test_replay_of_sealed_bytes(bob: SignalingVerifier) -> None:
    data = seal(offer(), ALICE, CREDS)
    bob.verify(data, NOW)
    assert refusal(bob, data, NOW + 1) == "replay"
    assert refusal(bob, data, NOW + 30_001) == "stale"
    # Nonces are per sender: Mallory may pick the same nonce.
    bob.verify(seal(offer(MALLORY), MALLORY, CREDS), NOW)
    assert bob.refusals["replay"] == 1 and bob.refusals["stale"] == 1


def test_freshness_window_edges(bob: SignalingVerifier) -> None:
    def at(ts: int, nonce: str) -> bytes:
        return seal(offer(timestamp_ms=ts, nonce=nonce), ALICE, CREDS)

    assert refusal(bob, at(NOW - 30_001, "01" * 16)) == "stale"
    assert refusal(bob, at(NOW + 30_001, "02" * 16)) == "future"
    bob.verify(at(NOW - 30_000, "03" * 16), NOW)
    bob.verify(at(NOW + 30_000, "04" * 16), NOW)


def test_wrong_recipient() -> None:
    mallory = SignalingVerifier(CREDS, self_id=MALLORY.node_id)
    assert refusal(mallory, seal(offer(), ALICE, CREDS)) == "wrong-recipient"


def test_allowlist() -> None:
    closed = MeshCredentials(SECRET, frozenset({ALICE.public_key_hex}))
    bob = SignalingVerifier(closed, self_id=BOB.node_id)
    assert refusal(bob, seal(offer(MALLORY), MALLORY, closed)) == "not-allowed"
    assert bob.verify(seal(offer(), ALICE, closed), NOW).sender == ALICE.node_id


def test_fingerprint_must_come_from_the_sdp(bob: SignalingVerifier) -> None:
    bogus = offer(fingerprint="sha-256 00:11:22")
    with pytest.raises(TrustError, match="fingerprint"):
        seal(bogus, ALICE, CREDS)
    assert refusal(bob, forge(bogus, ALICE, SECRET)) == "fingerprint-mismatch"
    assert bob.verify(seal(offer(), ALICE, CREDS), NOW) == offer()  # same nonce still usable


def test_seal_refuses_messages_that_cannot_verify() -> None:
    for bad in (
        offer(sender=BOB.node_id),
        offer(public_key=BOB.public_key_hex),
        offer(mesh_id=mesh_id_for(OTHER_SECRET)),
        offer(nonce="xyz"),
        offer(kind="bye"),
        offer(timestamp_ms=-1),
        offer(sdp=SDP + "a=x:" + "y" * 70_000 + "\r\n"),
    ):
        with pytest.raises(TrustError):
            seal(bad, ALICE, CREDS)


def test_malformed_inputs(bob: SignalingVerifier) -> None:
    good = json.loads(seal(offer(), ALICE, CREDS))
    cases = [
        b"",
        b"not json",
        b"[" * 100_000,
        b"[" * 60_000,
        b"\xff\xfe",
        b"{" + b" " * 70_000 + b"}",
        json.dumps(good).encode(),  # not canonical (spaces)
        trust._canonical(good | {"extra": 1}),
        trust._canonical(good | {"timestamp_ms": True}),
        trust._canonical(good | {"tiers": "hot"}),
        trust._canonical(good | {"sig": "00"}),
        trust._canonical({k: v for k, v in good.items() if k != "mac"}),
        trust._canonical(good)[:-1] + b',"mac":"00"}',  # duplicate key
    ]
    for data in cases:
        assert refusal(bob, data) == "malformed"
    assert bob.refusals["malformed"] == len(cases)


def test_nonce_cache_is_bounded_and_evictions_never_reopen_replays() -> None:
    bob = SignalingVerifier(CREDS, self_id=BOB.node_id, nonce_capacity=3)
    sealed = [seal(offer(timestamp_ms=NOW + i, nonce=f"{i:032x}"), ALICE, CREDS) for i in range(5)]
    for data in sealed:
        bob.verify(data, NOW)
    assert len(bob._seen) == 3
    for data in sealed:
        assert refusal(bob, data) == "replay"
    # Nonces older than the window are forgotten.
    later = seal(offer(timestamp_ms=NOW + 60_000, nonce="ff" * 16), ALICE, CREDS)
    bob.verify(later, NOW + 60_000)
    assert list(bob._seen) == [(ALICE.node_id, "ff" * 16)]


def test_one_member_flooding_the_nonce_cache_cannot_refuse_the_others() -> None:
    bob = SignalingVerifier(CREDS, self_id=BOB.node_id, nonce_capacity=100)
    first = seal(offer(timestamp_ms=NOW - 5, nonce="aa" * 16), ALICE, CREDS)
    bob.verify(first, NOW)
    for i in range(150):  # future-dated, within the window: each evicts the oldest nonce
        flood = offer(MALLORY, timestamp_ms=NOW + 29_000 + i, nonce=f"{i:032x}")
        bob.verify(seal(flood, MALLORY, CREDS), NOW)
    assert refusal(bob, first) == "replay"  # Alice's evicted nonce stays refused
    bob.verify(seal(offer(timestamp_ms=NOW + 1, nonce="bb" * 16), ALICE, CREDS), NOW + 2)


def test_dtls_fingerprints() -> None:
    assert dtls_fingerprints(SDP) == [FP256, FP384]
    assert dtls_fingerprints("v=0\na=fingerprint: sha-1 AA \n a=fingerprint:\n") == ["sha-1 AA"]
    assert dtls_fingerprints("") == []


def test_fingerprints_of_a_real_aiortc_offer(bob: SignalingVerifier) -> None:
    import aiortc  # a hard dependency: no skip

    async def make_offer() -> str:
        pc = aiortc.RTCPeerConnection()
        pc.createDataChannel("mesh")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    sdp = asyncio.run(make_offer())
    fps = dtls_fingerprints(sdp)
    assert fps and fps[0].startswith("sha-256 ")
    msg = offer(sdp=sdp, fingerprint=fps[0])
    assert bob.verify(seal(msg, ALICE, CREDS), NOW) == msg


def test_token_round_trip_and_format() -> None:
    token = JoinToken(SECRET, ("192.168.1.20:7400", "[fd00::2]:7400", "relay.example:443"))
    text = token.encode()
    assert text.startswith("mm1.") and "=" not in text and text.isascii()
    assert JoinToken.decode(text) == token
    wrapped = "  " + "\n".join(text[i : i + 20] for i in range(0, len(text), 20)) + "\n"
    assert JoinToken.decode(wrapped) == token
    assert JoinToken.decode(JoinToken(SECRET).encode()) == JoinToken(SECRET)
    assert SECRET.hex() not in repr(token)


def test_token_rejects_bad_construction() -> None:
    for bootstrap in (("nohost",), ("host:0",), ("host:70000",), ("has space:1",), ("é:1",)):
        with pytest.raises(ValueError):
            JoinToken(SECRET, bootstrap)
    with pytest.raises(ValueError):
        JoinToken(SECRET, tuple(f"h{i}:1" for i in range(17)))
    with pytest.raises(ValueError):
        JoinToken(b"\x00" * 16)


def _raw_token(payload: bytes) -> str:
    blob = payload + trust._checksum(payload)
    return "mm1." + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def test_token_errors_are_clear() -> None:
    text = JoinToken(SECRET, ("a:1",)).encode()
    flipped = text[:-3] + ("A" if text[-3] != "A" else "B") + text[-2:]
    expectations = {
        "xx1." + text[4:]: "expected it to start with",
        text + "!": "not base64url",
        text + "=": "not base64url",
        flipped: r"token is corrupt \(checksum\)",
        "mm1." + text[4:20]: "wrong length",
        _raw_token(SECRET + b"\x02\x03a:1"): "wrong length",
        _raw_token(SECRET + b"\x00\x00"): "wrong length",
        _raw_token(SECRET + b"\x01\x03a:0"): "invalid",
        "mm1." + "A" * 9000: "too long",
    }
    for bad, message in expectations.items():
        with pytest.raises(TokenError, match=message):
            JoinToken.decode(bad)


def test_every_other_last_character_is_refused() -> None:
    # The last base64 character carries unused bits; a change there must not go unnoticed.
    text = JoinToken(SECRET).encode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for char in alphabet.replace(text[-1], ""):
        with pytest.raises(TokenError):
            JoinToken.decode(text[:-1] + char)


def test_a_hello_to_anyone_verifies_but_opens_nothing_else(bob: SignalingVerifier) -> None:
    hello = offer(kind="hello", recipient=trust.ANY_RECIPIENT, sdp="", fingerprint="")
    assert bob.verify(seal(hello, ALICE, CREDS), NOW).kind == "hello"
    # Only a hello may name no recipient, and a hello carries no SDP.
    stray = offer(recipient=trust.ANY_RECIPIENT, nonce="cd" * 16)
    assert refusal(bob, forge(stray, ALICE, SECRET)) == "wrong-recipient"
    with_sdp = replace(hello, sdp=SDP, fingerprint=FP256, nonce="ef" * 16)
    assert refusal(bob, forge(with_sdp, ALICE, SECRET)) == "fingerprint-mismatch"
    # It is checked like any other signaling message: mesh, MAC, freshness, replays.
    assert refusal(bob, seal(hello, ALICE, CREDS)) == "replay"
    other = SignalingVerifier(MeshCredentials(OTHER_SECRET), self_id=BOB.node_id)
    assert refusal(other, seal(replace(hello, nonce="12" * 16), ALICE, CREDS)) == "wrong-mesh"
