"""Persistent Ed25519 node identity: a private seed file plus a short node id derived from it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

KEY_FILENAME: Final = "node.key"
SEED_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
NODE_ID_HEX_CHARS: Final = 16
_MAX_KEY_FILE_BYTES: Final = 4096
_CHECK_PERMISSIONS: Final = os.name == "posix"


class IdentityError(Exception):
    """The node key file is unusable (permissions, malformed, unreadable); it was left unchanged."""


def node_id_for(verify_key: bytes) -> str:
    """Return the node id: the first 16 hex chars of SHA-256 over the raw verify key bytes."""
    return hashlib.sha256(verify_key).hexdigest()[:NODE_ID_HEX_CHARS]


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry change to disk where the platform supports it."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_seed(path: Path) -> bytes:
    """Read and validate the hex seed in path; raise IdentityError naming the file if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"{path}: cannot open node key file: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: node key file is not a regular file")
        if _CHECK_PERMISSIONS and st.st_mode & 0o077:
            raise IdentityError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; the node "
                f"key must not be accessible by group or others (run: chmod 600 {path})"
            )
        raw = fh.read(_MAX_KEY_FILE_BYTES + 1)
    try:
        text = raw.decode("ascii").strip()
        seed = bytes.fromhex(text)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise IdentityError(f"{path}: malformed node key file (expected hex seed)") from exc
    if len(seed) != SEED_BYTES:
        raise IdentityError(
            f"{path}: malformed node key file (expected {SEED_BYTES * 2} hex chars, "
            f"got {len(text)}); not overwriting it"
        )
    return seed


def _write_new_seed(path: Path, seed: bytes) -> bool:
    """Atomically create path holding seed with mode 0600; False if it already exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        try:
            if _CHECK_PERMISSIONS:
                os.fchmod(fd, 0o600)  # exact mode regardless of umask
            os.write(fd, seed.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never replaces an existing key
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


@dataclass(frozen=True)
class NodeIdentity:
    """An Ed25519 signing key and the node id derived from its public key."""

    signing_key: SigningKey = field(repr=False)
    node_id: str

    def __post_init__(self) -> None:
        """Reject a node_id that does not match the signing key."""
        expected = node_id_for(bytes(self.signing_key.verify_key.encode()))
        if self.node_id != expected:
            raise ValueError(f"node_id {self.node_id!r} does not match key (expected {expected})")

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """Build the identity for a 32-byte Ed25519 seed."""
        key = SigningKey(bytes(seed))
        return cls(signing_key=key, node_id=node_id_for(bytes(key.verify_key.encode())))

    @classmethod
    def load_or_create(cls, data_dir: Path) -> NodeIdentity:
        """Load data_dir/node.key, creating a fresh 0600 key only if the file does not exist."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / KEY_FILENAME
        for _ in range(2):
            try:
                return cls.from_seed(_read_seed(path))
            except FileNotFoundError:
                pass
            seed = secrets.token_bytes(SEED_BYTES)
            try:
                created = _write_new_seed(path, seed)
            except OSError as exc:
                raise IdentityError(f"{path}: cannot create node key file: {exc}") from exc
            if created:
                return cls.from_seed(seed)
            # Another process created the key concurrently: load theirs on the next pass.
        raise IdentityError(f"{path}: node key file appeared and vanished while loading")

    @property
    def public_key_hex(self) -> str:
        """Hex encoding of the 32-byte Ed25519 verify key."""
        return bytes(self.signing_key.verify_key.encode()).hex()

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of data."""
        return bytes(self.signing_key.sign(bytes(data)).signature)

    @staticmethod
    def verify(public_key_hex: str, data: bytes, signature: bytes) -> bool:
        """Return True iff signature is a valid signature of data by public_key_hex."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            key = VerifyKey(bytes.fromhex(public_key_hex))
            key.verify(bytes(data), bytes(signature))
        except (BadSignatureError, CryptoError, ValueError, TypeError):
            return False
        return True
