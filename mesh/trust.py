"""Mesh membership trust: join tokens, mesh ids, and sealed, verified WebRTC signaling messages."""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Final, NoReturn

from mesh.identity import NodeIdentity, node_id_for

SECRET_BYTES: Final = 32
MAX_SIGNALING_BYTES: Final = 64 * 1024
TOKEN_PREFIX: Final = "mm1."
MAX_BOOTSTRAP: Final = 16
MAX_ADDRESS_BYTES: Final = 255
MAX_TOKEN_CHARS: Final = 8192
REASONS: Final = (
    *("malformed", "wrong-mesh", "bad-mac", "id-mismatch", "bad-signature", "wrong-recipient"),
    *("not-allowed", "stale", "future", "replay", "fingerprint-mismatch"),
)
_CHECKSUM_BYTES: Final = 4
_SIG_DOMAIN: Final = b"memmesh/signaling/v1\x00"
_MAX_TIMESTAMP: Final = 2**63 - 1
_KINDS: Final = frozenset({"offer", "answer", "hello"})
# A "hello" (a static-discovery probe: who answers at this address?) names no recipient
# and carries no SDP; it opens nothing and is answered by a sealed "hello" to its sender.
ANY_RECIPIENT: Final = "0" * 16
_FIELDS: Final = (
    *("kind", "sender", "recipient", "mesh_id", "public_key", "timestamp_ms", "nonce", "sdp"),
    *("fingerprint", "tiers", "profile"),
)
_SEALED_KEYS: Final = frozenset((*_FIELDS, "sig", "mac"))


def _hex(chars: int) -> re.Pattern[str]:
    """Return a pattern matching exactly `chars` lowercase hex digits."""
    return re.compile(f"[0-9a-f]{{{chars}}}")


_STR_PATTERNS: Final[dict[str, re.Pattern[str] | None]] = {
    "kind": None,
    "sender": _hex(16),
    "recipient": _hex(16),
    "mesh_id": _hex(16),
    "public_key": _hex(64),
    "nonce": _hex(32),
    "sdp": None,
    "fingerprint": None,
    "profile": None,
}
_SIG_RE: Final = _hex(128)
_MAC_RE: Final = _hex(64)
_PUBKEY_RE: Final = _hex(64)
_B64_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_ADDR_RE: Final = re.compile(r"([!-~]+):([0-9]{1,5})")


class TrustError(ValueError):
    """Base class for every membership-trust failure."""


class TokenError(TrustError):
    """A join token that cannot be decoded."""


class SignalingRefused(TrustError):
    """A signaling message that must get no data channel; `reason` is a short code from REASONS."""

    def __init__(self, reason: str) -> None:
        """Record the refusal reason code."""
        super().__init__(f"signaling refused: {reason}")
        self.reason = reason


def _require_secret(secret: bytes) -> bytes:
    """Return secret as bytes, or raise ValueError unless it is exactly 32 bytes."""
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ValueError(f"mesh secret must be {SECRET_BYTES} bytes")
    return bytes(secret)


def mesh_id_for(secret: bytes) -> str:
    """Return the public 16-hex mesh id: BLAKE2b keyed by the secret; never reveals the secret."""
    key = _require_secret(secret)
    return hashlib.blake2b(b"mesh-id", digest_size=8, key=key, person=b"memmesh-meshid").hexdigest()


def _mac(secret: bytes, body: bytes, sig: bytes) -> bytes:
    """Return the keyed BLAKE2b-256 of body + sig under the mesh secret."""
    return hashlib.blake2b(
        body + sig, digest_size=32, key=secret, person=b"memmesh-sigmac"
    ).digest()


def _checksum(payload: bytes) -> bytes:
    """Return the 4-byte token checksum of payload."""
    return hashlib.blake2b(payload, digest_size=_CHECKSUM_BYTES, person=b"memmesh-token").digest()


@dataclass(frozen=True)
class MeshCredentials:
    """The mesh secret (32 bytes) and an optional allowlist of hex public keys (None = anyone)."""

    secret: bytes = field(repr=False)
    allowlist: frozenset[str] | None = None

    def __post_init__(self) -> None:
        """Reject a secret that is not 32 bytes or allowlist entries that are not 64-hex keys."""
        object.__setattr__(self, "secret", _require_secret(self.secret))
        if self.allowlist is not None:
            keys = frozenset(str(k).lower() for k in self.allowlist)
            bad = sorted(k for k in keys if not _PUBKEY_RE.fullmatch(k))
            if bad:
                raise ValueError(f"allowlist entries must be 64-hex Ed25519 public keys: {bad[:3]}")
            object.__setattr__(self, "allowlist", keys)

    @property
    def mesh_id(self) -> str:
        """The public mesh id derived from the secret."""
        return mesh_id_for(self.secret)


def _check_address(addr: object) -> str:
    """Return addr if it is a printable-ASCII "host:port" with port 1-65535, else ValueError."""
    if not isinstance(addr, str) or len(addr.encode("utf-8")) > MAX_ADDRESS_BYTES:
        raise ValueError(f"bootstrap address must be a short str, got {addr!r}")
    match = _ADDR_RE.fullmatch(addr)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"bootstrap address must be 'host:port', got {addr!r}")
    return addr


@dataclass(frozen=True)
class JoinToken:
    """What a new node needs to join: the mesh secret and optional "host:port" bootstrap peers."""

    secret: bytes = field(repr=False)
    bootstrap: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Reject a bad secret, more than 16 addresses, or an address that is not "host:port"."""
        object.__setattr__(self, "secret", _require_secret(self.secret))
        addrs = tuple(_check_address(a) for a in self.bootstrap)
        if len(addrs) > MAX_BOOTSTRAP:
            raise ValueError(f"at most {MAX_BOOTSTRAP} bootstrap addresses")
        object.__setattr__(self, "bootstrap", addrs)

    def encode(self) -> str:
        """Return "mm1." + unpadded base64url of secret, length-prefixed addresses and checksum."""
        parts = [self.secret, bytes([len(self.bootstrap)])]
        for addr in self.bootstrap:
            raw = addr.encode("ascii")
            parts += [bytes([len(raw)]), raw]
        payload = b"".join(parts)
        blob = payload + _checksum(payload)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(blob).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        """Parse a token (whitespace anywhere is ignored); raise TokenError on anything wrong."""
        if not isinstance(text, str):
            raise TokenError("token must be text")
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenError("token is too long")
        text = "".join(text.split())
        if not text.startswith(TOKEN_PREFIX):
            raise TokenError(
                f"not a memmesh join token (expected it to start with {TOKEN_PREFIX!r})"
            )
        body = text[len(TOKEN_PREFIX) :]
        if not _B64_RE.fullmatch(body) or len(body) % 4 == 1:
            raise TokenError("token is corrupt (not base64url)")
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("token is corrupt (not base64url)") from exc
        if base64.urlsafe_b64encode(blob).decode("ascii").rstrip("=") != body:
            raise TokenError("token is corrupt (not canonical base64url)")
        if len(blob) < SECRET_BYTES + 1 + _CHECKSUM_BYTES:
            raise TokenError("token is truncated (wrong length)")
        payload, check = blob[:-_CHECKSUM_BYTES], blob[-_CHECKSUM_BYTES:]
        if not hmac.compare_digest(_checksum(payload), check):
            raise TokenError("token is corrupt (checksum)")
        return cls._from_payload(payload)

    @classmethod
    def _from_payload(cls, payload: bytes) -> JoinToken:
        """Parse a checksummed payload; raise TokenError on a bad structure or address."""
        secret, count, pos = payload[:SECRET_BYTES], payload[SECRET_BYTES], SECRET_BYTES + 1
        addrs: list[str] = []
        for _ in range(count):
            if pos >= len(payload) or pos + 1 + payload[pos] > len(payload):
                raise TokenError("token has the wrong length (truncated address list)")
            size = payload[pos]
            addrs.append(payload[pos + 1 : pos + 1 + size].decode("ascii", errors="replace"))
            pos += 1 + size
        if pos != len(payload):
            raise TokenError("token has the wrong length (trailing bytes)")
        try:
            return cls(secret=secret, bootstrap=tuple(addrs))
        except ValueError as exc:
            raise TokenError(f"token content is invalid: {exc}") from exc


@dataclass(frozen=True)
class SignalingMessage:
    """An SDP offer or answer from sender to recipient, bound to a mesh, a key and a DTLS cert."""

    kind: str
    sender: str
    recipient: str
    mesh_id: str
    public_key: str
    timestamp_ms: int
    nonce: str
    sdp: str
    fingerprint: str
    tiers: tuple[str, ...] = ()
    profile: str = ""


def dtls_fingerprints(sdp: str) -> list[str]:
    """Return every "a=fingerprint:" value in the SDP, in order, whitespace-stripped."""
    prefix = "a=fingerprint:"
    lines = (line.strip() for line in sdp.splitlines())
    return [v for line in lines if line.startswith(prefix) and (v := line[len(prefix) :].strip())]


def _fields(message: SignalingMessage) -> dict[str, object]:
    """Return the signed fields of message as a JSON-ready dict."""
    return {name: getattr(message, name) for name in _FIELDS} | {"tiers": list(message.tiers)}


def _canonical(obj: dict[str, object]) -> bytes:
    """Return the canonical JSON bytes: sorted keys, no spaces, ASCII-only escapes."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def _check_fields(obj: dict[str, object]) -> None:
    """Raise ValueError unless obj holds exactly well-typed, well-formed signaling fields."""
    for name, pattern in _STR_PATTERNS.items():
        value = obj[name]
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise ValueError(f"bad field {name}")
    if obj["kind"] not in _KINDS:
        raise ValueError("bad field kind")
    ts = obj["timestamp_ms"]
    if type(ts) is not int or not 0 <= ts <= _MAX_TIMESTAMP:
        raise ValueError("bad field timestamp_ms")
    tiers = obj["tiers"]
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        raise ValueError("bad field tiers")


def _seal_unchecked(fields: dict[str, object], identity: NodeIdentity, secret: bytes) -> bytes:
    """Sign and MAC fields as given, with no consistency checks (also used to forge in tests)."""
    body = _canonical(fields)
    sig = identity.sign(_SIG_DOMAIN + body)
    return _canonical(fields | {"sig": sig.hex(), "mac": _mac(secret, body, sig).hex()})


def seal(message: SignalingMessage, identity: NodeIdentity, credentials: MeshCredentials) -> bytes:
    """Return the signed, MACed JSON of message; TrustError if it could never verify."""
    fields = _fields(message)
    try:
        _check_fields(fields)
    except ValueError as exc:
        raise TrustError(f"cannot seal: {exc}") from exc
    if message.sender != identity.node_id or message.public_key != identity.public_key_hex:
        raise TrustError("cannot seal: sender/public_key do not match the signing identity")
    if message.mesh_id != credentials.mesh_id:
        raise TrustError("cannot seal: mesh_id does not match the credentials")
    if not _fingerprint_ok(message):
        raise TrustError("cannot seal: fingerprint is not an a=fingerprint value of the SDP")
    data = _seal_unchecked(fields, identity, credentials.secret)
    if len(data) > MAX_SIGNALING_BYTES:
        raise TrustError(f"cannot seal: {len(data)} bytes exceeds {MAX_SIGNALING_BYTES}")
    return data


def _fingerprint_ok(message: SignalingMessage) -> bool:
    """Return whether the fingerprint is one of the SDP's (a hello has neither)."""
    if message.kind == "hello":
        return not message.sdp and not message.fingerprint
    return message.fingerprint in dtls_fingerprints(message.sdp)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Build a JSON object, raising ValueError on a duplicate key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity literals."""
    raise ValueError(f"non-finite number {name}")


def _decode(data: bytes) -> tuple[SignalingMessage, bytes, bytes]:
    """Parse canonical sealed bytes into (message, sig, mac); ValueError if malformed."""
    if len(data) > MAX_SIGNALING_BYTES:
        raise ValueError("too large")
    obj = json.loads(
        bytes(data).decode("utf-8"),
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(obj, dict) or obj.keys() != _SEALED_KEYS:
        raise ValueError("wrong keys")
    _check_fields(obj)
    sig, mac = obj["sig"], obj["mac"]
    if not isinstance(sig, str) or not isinstance(mac, str):
        raise ValueError("bad sig/mac")
    if not _SIG_RE.fullmatch(sig) or not _MAC_RE.fullmatch(mac) or _canonical(obj) != data:
        raise ValueError("bad sig/mac or not canonical")
    message = SignalingMessage(**{k: obj[k] for k in _FIELDS} | {"tiers": tuple(obj["tiers"])})
    return message, bytes.fromhex(sig), bytes.fromhex(mac)


class SignalingVerifier:
    """Verifies sealed signaling messages for one node; remembers nonces to refuse replays."""

    def __init__(
        self,
        credentials: MeshCredentials,
        *,
        self_id: str,
        window_ms: int = 30_000,
        nonce_capacity: int = 10_000,
    ) -> None:
        """Verify for self_id; accept timestamps within +-window_ms; remember capacity nonces."""
        if window_ms <= 0 or nonce_capacity <= 0:
            raise ValueError("window_ms and nonce_capacity must be positive")
        self._credentials = credentials
        self._mesh_id = credentials.mesh_id
        self._self_id = self_id
        self._window = window_ms
        self._capacity = nonce_capacity
        self._seen: dict[tuple[str, str], int] = {}
        self._by_time: list[tuple[int, str, str]] = []
        # Per sender: the highest timestamp of a nonce forgotten while still fresh (the cache
        # was full); that sender's messages at or below it are refused. Per sender, so that
        # one member flooding the cache (with future-dated hellos, say) cannot push every
        # other member's fresh offers under a shared floor.
        self._floors: dict[str, int] = {}
        self.refusals: dict[str, int] = dict.fromkeys(REASONS, 0)

    def _refuse(self, reason: str) -> NoReturn:
        """Count and raise a refusal."""
        self.refusals[reason] += 1
        raise SignalingRefused(reason)

    def _forget_oldest(self, now_ms: int) -> None:
        """Drop the nonce with the oldest timestamp; if still fresh, raise its sender's floor."""
        ts, sender, nonce = heapq.heappop(self._by_time)
        del self._seen[(sender, nonce)]
        if ts >= now_ms - self._window:  # a stale one needs no floor: "stale" refuses it
            self._floors[sender] = max(self._floors.get(sender, ts), ts)
        if len(self._floors) > self._capacity:  # bounded too: drop floors gone stale
            horizon = now_ms - self._window
            self._floors = {s: f for s, f in self._floors.items() if f >= horizon}

    def verify(self, data: bytes, now_ms: int) -> SignalingMessage:
        """Return the verified message, or raise SignalingRefused naming the first failed check."""
        try:
            msg, sig, mac = _decode(data)
        except (ValueError, TypeError, RecursionError):
            self._refuse("malformed")
        if not hmac.compare_digest(msg.mesh_id, self._mesh_id):
            self._refuse("wrong-mesh")
        body = _canonical(_fields(msg))
        if not hmac.compare_digest(_mac(self._credentials.secret, body, sig), mac):
            self._refuse("bad-mac")
        if node_id_for(bytes.fromhex(msg.public_key)) != msg.sender:
            self._refuse("id-mismatch")
        if not NodeIdentity.verify(msg.public_key, _SIG_DOMAIN + body, sig):
            self._refuse("bad-signature")
        if msg.recipient != self._self_id and (msg.kind, msg.recipient) != ("hello", ANY_RECIPIENT):
            self._refuse("wrong-recipient")
        allowlist = self._credentials.allowlist
        if allowlist is not None and msg.public_key not in allowlist:
            self._refuse("not-allowed")
        if msg.timestamp_ms < now_ms - self._window:
            self._refuse("stale")
        if msg.timestamp_ms > now_ms + self._window:
            self._refuse("future")
        while self._by_time and self._by_time[0][0] < now_ms - self._window:
            self._forget_oldest(now_ms)
        key = (msg.sender, msg.nonce)
        if key in self._seen or msg.timestamp_ms <= self._floors.get(msg.sender, -1):
            self._refuse("replay")
        if not _fingerprint_ok(msg):
            self._refuse("fingerprint-mismatch")
        while len(self._seen) >= self._capacity:
            self._forget_oldest(now_ms)
        self._seen[key] = msg.timestamp_ms
        heapq.heappush(self._by_time, (msg.timestamp_ms, msg.sender, msg.nonce))
        return msg
