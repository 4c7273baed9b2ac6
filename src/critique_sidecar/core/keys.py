"""API keys: `crt_` + 32 base62 random characters (~190 bits) + 6 base62 checksum characters.

The checksum (CRC32 of the random part) lets secret scanners recognise a leaked key and
lets us reject typos and forgeries before any store lookup. Only the SHA-256 of a key is
stored; a high-entropy secret needs no slow hash. Lookups go by that hash, and the stored
hash is compared again with `hmac.compare_digest`, so no timing depends on the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass
from typing import Protocol

PREFIX = "crt_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN = 32
CHECKSUM_LEN = 6
KEY_LEN = len(PREFIX) + BODY_LEN + CHECKSUM_LEN
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


def generate_key() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    return PREFIX + body + _checksum(body)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def is_well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum; no store access."""
    if len(key) != KEY_LEN or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) : len(PREFIX) + BODY_LEN]
    if any(c not in _INDEX for c in key[len(PREFIX) :]):
        return False
    return hmac.compare_digest(key[-CHECKSUM_LEN:], _checksum(body))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def hashes_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows about one key (never the key itself)."""

    key_id: str
    key_hash: str
    account: str
    scopes: frozenset[str]
    name: str = ""
    created_at: int = 0
    revoked: bool = False
    # After a rotation, the old secret's record says when it stops working (unix ms; 0: never).
    retires_at_ms: int = 0
    # A copy of KeyControls.expires_at_ms, so routes without the admission script (models,
    # settings, dashboard) refuse an expired key too; the chat route checks the controls.
    expires_at_ms: int | None = None
    parent: str = ""  # the id of the key that created this one ("" for an operator's)


class KeyDirectory(Protocol):
    """Where keys are looked up by hash (store/key_store.RedisKeyStore implements it)."""

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None: ...
