"""Behavioural tests for the persistent Ed25519 node identity."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mesh.identity import KEY_FILENAME, IdentityError, NodeIdentity


def test_creates_private_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    NodeIdentity.load_or_create(data_dir)
    key_file = data_dir / KEY_FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    seed_hex = key_file.read_text().strip()
    assert len(seed_hex) == 64 and bytes.fromhex(seed_hex)
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILENAME]  # no temp files left


def test_node_id_stable_across_loads(tmp_path: Path) -> None:
    first = NodeIdentity.load_or_create(tmp_path)
    second = NodeIdentity.load_or_create(tmp_path)
    assert first.node_id == second.node_id
    assert first.public_key_hex == second.public_key_hex
    expected = hashlib.sha256(bytes.fromhex(first.public_key_hex)).hexdigest()[:16]
    assert first.node_id == expected
    assert len(first.node_id) == 16
    assert NodeIdentity.load_or_create(tmp_path / "other").node_id != first.node_id


def test_refuses_group_or_world_readable_key(tmp_path: Path) -> None:
    NodeIdentity.load_or_create(tmp_path)
    key_file = tmp_path / KEY_FILENAME
    os.chmod(key_file, 0o644)
    before = key_file.read_bytes()
    with pytest.raises(IdentityError, match="too open") as info:
        NodeIdentity.load_or_create(tmp_path)
    assert str(key_file) in str(info.value)
    assert key_file.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [b"", b"not hex at all\n", b"abcd\n", b"\xff\xfe" * 40, b"00" * 33],
    ids=["empty", "not-hex", "short", "binary", "long"],
)
def test_malformed_key_file_is_reported_not_overwritten(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / KEY_FILENAME
    fd = os.open(key_file, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(IdentityError, match="malformed") as info:
        NodeIdentity.load_or_create(tmp_path)
    assert str(key_file) in str(info.value)
    assert key_file.read_bytes() == content


def test_sign_and_verify(tmp_path: Path) -> None:
    ident = NodeIdentity.load_or_create(tmp_path)
    other = NodeIdentity.load_or_create(tmp_path / "other")
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    assert NodeIdentity.verify(ident.public_key_hex, b"hello", sig)
    assert not NodeIdentity.verify(ident.public_key_hex, b"hellO", sig)
    assert not NodeIdentity.verify(other.public_key_hex, b"hello", sig)
    assert not NodeIdentity.verify(ident.public_key_hex, b"hello", sig[:-1])
    assert not NodeIdentity.verify("zz" * 32, b"hello", sig)
    assert not NodeIdentity.verify(ident.public_key_hex[:10], b"hello", sig)


def test_mismatched_node_id_rejected(tmp_path: Path) -> None:
    ident = NodeIdentity.load_or_create(tmp_path)
    with pytest.raises(ValueError):
        NodeIdentity(signing_key=ident.signing_key, node_id="0" * 16)
    assert NodeIdentity.from_seed(bytes(ident.signing_key.encode())) == ident
    assert "signing_key" not in repr(ident)
