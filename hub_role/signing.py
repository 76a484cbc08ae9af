"""Ed25519 signing behind two small protocols, so the election and relay cores stay pure.

A signature binds a node id to a public key: by default the node id must be
`mesh.identity.node_id_for(public_key)` (as on a real LAN); a keyring can pin ids that are
not derived from keys (the simulator's `n000` names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from mesh.identity import node_id_for

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64


class Signer(Protocol):
    """Signs on behalf of one node."""

    @property
    def public_key(self) -> bytes:
        """Return the 32-byte Ed25519 verify key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached signature of `data`."""
        ...


class Verifier(Protocol):
    """Checks that `signature` is `node_id`'s signature of `data`."""

    def check(self, node_id: str, public_key: bytes, data: bytes, signature: bytes) -> str | None:
        """Return None if valid, else the reason: "key_mismatch" or "bad_signature"."""
        ...


class Ed25519Signer:
    """A Signer over a PyNaCl signing key (built from a 32-byte seed)."""

    def __init__(self, seed: bytes) -> None:
        """Derive the key pair from a 32-byte seed (deterministic)."""
        self._key = SigningKey(bytes(seed))
        self._public = bytes(self._key.verify_key.encode())

    @property
    def public_key(self) -> bytes:
        """Return the 32-byte verify key."""
        return self._public

    @property
    def node_id(self) -> str:
        """Return the node id derived from the key (`node_id_for`)."""
        return node_id_for(self._public)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached signature of `data`."""
        return bytes(self._key.sign(bytes(data)).signature)


class Ed25519Verifier:
    """A Verifier: key bound to the id by `keyring` when listed there, else by `node_id_for`."""

    def __init__(self, keyring: Mapping[str, bytes] | None = None) -> None:
        """Pin `keyring` ids to their keys (read at each check); other ids derive from keys."""
        self._keyring: Mapping[str, bytes] = keyring if keyring is not None else {}

    def check(self, node_id: str, public_key: bytes, data: bytes, signature: bytes) -> str | None:
        """Return None if valid, else "key_mismatch" or "bad_signature"."""
        pinned = self._keyring.get(node_id)
        bound = public_key == pinned if pinned is not None else node_id_for(public_key) == node_id
        if len(public_key) != PUBLIC_KEY_BYTES or not bound:
            return "key_mismatch"
        if len(signature) != SIGNATURE_BYTES:
            return "bad_signature"
        try:
            VerifyKey(bytes(public_key)).verify(bytes(data), bytes(signature))
        except (BadSignatureError, CryptoError, ValueError, TypeError):
            return "bad_signature"
        return None
