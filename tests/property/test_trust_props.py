"""Property tests for trust: token round trips, and only the documented errors on damaged input."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.identity import NodeIdentity
from mesh.trust import (
    JoinToken,
    MeshCredentials,
    SignalingMessage,
    SignalingRefused,
    SignalingVerifier,
    TokenError,
    seal,
)

SECRET = bytes(range(32))
CREDS = MeshCredentials(SECRET)
ALICE = NodeIdentity.from_seed(b"\x01" * 32)
BOB = NodeIdentity.from_seed(b"\x02" * 32)
FP = "sha-256 " + ":".join(["AB"] * 32)
SDP = f"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=fingerprint:{FP}\r\n"
NOW = 1_700_000_000_000

hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"\[[0-9a-f:]{2,39}\]", fullmatch=True),
    st.ip_addresses(v=4).map(str),
)
addresses = st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535))
tokens = st.builds(
    JoinToken,
    st.binary(min_size=32, max_size=32),
    st.lists(addresses, max_size=16).map(tuple),
)


@given(tokens)
def test_token_round_trip(token: JoinToken) -> None:
    text = token.encode()
    assert text.startswith("mm1.") and text.isascii() and not any(c.isspace() for c in text)
    assert JoinToken.decode(text) == token


@given(tokens, st.data())
def test_any_changed_character_is_a_token_error(token: JoinToken, data: st.DataObject) -> None:
    text = token.encode()
    index = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.characters().filter(lambda c: c != text[index]))
    try:
        JoinToken.decode(text[:index] + char + text[index + 1 :])
    except TokenError:
        return
    raise AssertionError("a corrupted token was accepted")


@given(st.one_of(st.text(), st.text().map(lambda t: "mm1." + t), tokens, st.data()))
def test_decode_raises_only_token_error(value: object) -> None:
    if isinstance(value, JoinToken):
        value = value.encode()[:-5]
    elif not isinstance(value, str):
        data = value
        assert isinstance(data, st.DataObject)
        raw = data.draw(st.binary())
        value = "mm1." + raw.hex() if data.draw(st.booleans()) else raw.decode("latin-1")
    with contextlib.suppress(TokenError):  # any other exception fails the test
        JoinToken.decode(value)


def verifier() -> SignalingVerifier:
    return SignalingVerifier(CREDS, self_id=BOB.node_id)


def message(**changes: object) -> SignalingMessage:
    fields: dict[str, object] = {
        "kind": "offer",
        "sender": ALICE.node_id,
        "recipient": BOB.node_id,
        "mesh_id": CREDS.mesh_id,
        "public_key": ALICE.public_key_hex,
        "timestamp_ms": NOW,
        "nonce": "cd" * 16,
        "sdp": SDP,
        "fingerprint": FP,
    }
    return SignalingMessage(**(fields | changes))  # type: ignore[arg-type]


SEALED = seal(message(), ALICE, CREDS)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=512),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(sorted(json.loads(SEALED))), json_values).map(
            lambda d: json.dumps(
                json.loads(SEALED) | d, sort_keys=True, separators=(",", ":")
            ).encode()
        ),
    ),
    st.integers(-(2**70), 2**70),
)
def test_verify_raises_only_signaling_refused(data: bytes, now_ms: int) -> None:
    try:
        verifier().verify(data, now_ms)
    except SignalingRefused:
        return
    raise AssertionError("arbitrary bytes were accepted")


@given(st.data())
def test_any_mutation_of_sealed_bytes_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(SEALED) - 1))
    action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    byte = data.draw(st.integers(0, 255))
    if action == "replace":
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != SEALED[index]))
        mutated = SEALED[:index] + bytes([byte]) + SEALED[index + 1 :]
    elif action == "insert":
        mutated = SEALED[:index] + bytes([byte]) + SEALED[index:]
    else:
        mutated = SEALED[:index] + SEALED[index + 1 :]
    try:
        verifier().verify(mutated, NOW)
    except SignalingRefused:
        return
    raise AssertionError(f"mutated message accepted: {action} at {index}")


@given(
    sdp_extra=st.text(max_size=200),
    profile=st.text(max_size=30),
    tiers=st.lists(st.text(max_size=10), max_size=4).map(tuple),
    kind=st.sampled_from(["offer", "answer"]),
    nonce=st.binary(min_size=16, max_size=16).map(bytes.hex),
    skew=st.integers(-30_000, 30_000),
)
def test_seal_verify_round_trip(
    sdp_extra: str, profile: str, tiers: tuple[str, ...], kind: str, nonce: str, skew: int
) -> None:
    msg = message(
        sdp=SDP + sdp_extra,
        profile=profile,
        tiers=tiers,
        kind=kind,
        nonce=nonce,
        timestamp_ms=NOW + skew,
    )
    v = verifier()
    sealed = seal(msg, ALICE, CREDS)
    assert v.verify(sealed, NOW) == msg
    try:
        v.verify(sealed, NOW)
    except SignalingRefused as exc:
        assert exc.reason == "replay"
    else:
        raise AssertionError("replay accepted")
