"""Creating a node, a mesh, and joining one: the files `memmesh init` writes.

`DATA/node.key` holds the node's Ed25519 key (mesh/identity.py); `DATA/mesh.json` holds the
mesh secret, the optional allowlist of node public keys and bootstrap addresses. Both are
owner-only (0600); the secret never leaves them except inside a join token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mesh.identity import NodeIdentity
from mesh.trust import JoinToken, MeshCredentials

MESH_FILE = "mesh.json"


class SetupError(Exception):
    """The data directory is not set up as asked (no mesh yet, or one already)."""


@dataclass(frozen=True, slots=True)
class MeshSetup:
    """What a node needs to join the mesh: its identity, credentials and bootstrap peers."""

    identity: NodeIdentity
    credentials: MeshCredentials
    bootstrap: tuple[str, ...]


def init_node(data_dir: Path, *, join: str | None = None) -> MeshSetup:
    """Create the identity and a new mesh (or join one with a token); never overwrite."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / MESH_FILE
    if path.exists():
        raise SetupError(f"{path} already exists: this node is already in a mesh")
    token = JoinToken.decode(join) if join else JoinToken(os.urandom(32))
    NodeIdentity.load_or_create(data_dir)
    body = {
        "secret": token.secret.hex(),
        "allowlist": None,
        "bootstrap": list(token.bootstrap),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    return load_setup(data_dir)


def load_setup(data_dir: Path) -> MeshSetup:
    """Read identity and mesh credentials; raise SetupError when `init` was not run."""
    path = data_dir / MESH_FILE
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise SetupError(
            f"{data_dir} has no mesh yet: run `memmesh init --data-dir {data_dir}` "
            "(add `--join TOKEN` to join an existing mesh)"
        ) from None
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None
    if path.stat().st_mode & 0o077:
        raise SetupError(f"{path} is readable by others; run `chmod 600 {path}`")
    try:
        allow = body.get("allowlist")
        credentials = MeshCredentials(
            bytes.fromhex(body["secret"]),
            None if allow is None else frozenset(str(k) for k in allow),
        )
        bootstrap = tuple(str(a) for a in body.get("bootstrap", ()))
    except (KeyError, TypeError, ValueError) as exc:
        raise SetupError(f"{path} is malformed: {exc}") from None
    return MeshSetup(NodeIdentity.load_or_create(data_dir), credentials, bootstrap)


def token_for(data_dir: Path, bootstrap: tuple[str, ...] = ()) -> str:
    """Return a join token for this node's mesh (it carries the mesh secret: share it safely)."""
    setup = load_setup(data_dir)
    return JoinToken(setup.credentials.secret, bootstrap or setup.bootstrap).encode()


def set_allowlist(data_dir: Path, public_keys: list[str] | None) -> None:
    """Restrict membership to these node public keys (None opens it to any token holder)."""
    path = data_dir / MESH_FILE
    body = json.loads(path.read_text())
    body["allowlist"] = None if public_keys is None else sorted(public_keys)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
