"""A node's Ed25519 identity: one 32-byte seed gives both its libp2p key pair and the nacl key it signs
rendezvous registrations with, so the peer ID in a registration is the peer ID of the libp2p host.

The seed comes from a secret (base64 text in an environment variable, as Secret Manager mounts it), or
from a file holding the same text; a missing file is created with a new seed, readable by its owner only.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import pathlib

import multiaddr
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from nacl.signing import SigningKey

SEED_BYTES = 32


class IdentityError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Identity:
    seed: bytes
    key_pair: KeyPair
    signing_key: SigningKey
    peer_id: ID

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"an identity seed must be {SEED_BYTES} bytes, got {len(seed)}")
        key_pair = create_new_key_pair(seed)
        return cls(seed, key_pair, SigningKey(seed), ID.from_pubkey(key_pair.public_key))

    def encoded(self) -> str:
        return base64.b64encode(self.seed).decode()

    def signed_peer_record(self, addrs: list[str]) -> bytes:
        """A libp2p signed peer record (RFC 0003) of our addresses, which any libp2p client can verify; the
        rendezvous hands it to clients of the libp2p rendezvous protocol."""
        record = PeerRecord(self.peer_id, [multiaddr.Multiaddr(a) for a in addrs])
        return seal_record(record, self.key_pair.private_key).marshal_envelope()


def decode_seed(text: str, where: str) -> bytes:
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{where}: not base64 text") from None
    if len(seed) != SEED_BYTES:
        raise IdentityError(f"{where}: must hold a base64 {SEED_BYTES}-byte Ed25519 seed, holds {len(seed)} bytes")
    return seed


def load_identity(secret: str | None, path: str | None) -> Identity:
    """From `secret` if given, else from the file at `path` (created if missing), else a fresh one."""
    if secret:
        return Identity.from_seed(decode_seed(secret, "IDENTITY_KEY"))
    if not path:
        return Identity.from_seed(os.urandom(SEED_BYTES))
    file = pathlib.Path(path).expanduser()
    if file.exists():
        return Identity.from_seed(decode_seed(file.read_text(), str(file)))
    identity = Identity.from_seed(os.urandom(SEED_BYTES))
    file.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes started on one path must not overwrite each other's key
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(identity.encoded() + "\n")
    return identity


def main() -> None:
    """`python -m shared.identity`: the peer ID of the base64 seed on stdin (Terraform's relay_identity_seed
    output), so an operator can pin the relay by identity (var.relay_peer_id)."""
    import sys

    try:
        print(Identity.from_seed(decode_seed(sys.stdin.read(), "stdin")).peer_id)
    except IdentityError as exc:
        sys.exit(f"identity: {exc}")


if __name__ == "__main__":
    main()
