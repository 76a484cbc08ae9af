"""hub_role.signing: the daemon's node key signs, and ids bind to keys (or a keyring)."""

from __future__ import annotations

from hub_role.signing import Ed25519Signer, Ed25519Verifier
from mesh.identity import NodeIdentity


def test_signer_from_a_node_identity_has_the_same_node_id() -> None:
    identity = NodeIdentity.from_seed(bytes(range(32)))
    signer = Ed25519Signer(bytes(identity.signing_key))
    assert signer.node_id == identity.node_id
    assert signer.public_key.hex() == identity.public_key_hex
    verifier = Ed25519Verifier()
    signature = signer.sign(b"data")
    assert verifier.check(identity.node_id, signer.public_key, b"data", signature) is None
    assert verifier.check(identity.node_id, signer.public_key, b"datA", signature) == (
        "bad_signature"
    )
    assert verifier.check("someone-else", signer.public_key, b"data", signature) == ("key_mismatch")
    assert verifier.check(identity.node_id, signer.public_key, b"data", b"short") == (
        "bad_signature"
    )


def test_keyring_pins_ids_and_is_read_at_each_check() -> None:
    ring: dict[str, bytes] = {}
    verifier = Ed25519Verifier(ring)
    alice, mallory = Ed25519Signer(b"\x01" * 32), Ed25519Signer(b"\x02" * 32)
    signature = alice.sign(b"x")
    assert verifier.check("n001", alice.public_key, b"x", signature) == "key_mismatch"
    ring["n001"] = alice.public_key
    assert verifier.check("n001", alice.public_key, b"x", signature) is None
    forged = mallory.sign(b"x")
    assert verifier.check("n001", mallory.public_key, b"x", forged) == "key_mismatch"
