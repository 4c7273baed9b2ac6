"""Who is calling: bearer key -> identity, with a short, bounded in-process cache."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ApiError
from .keys import KeyDirectory, KeyRecord, bearer_token, hash_key, hashes_match, is_well_formed
from .limits import key_expired
from .scopes import ADMIN_INFERENCE

ADMIN_SCOPES = frozenset({ADMIN_INFERENCE})


@dataclass(frozen=True, slots=True)
class Identity:
    account: str
    key_id: str
    scopes: frozenset[str]
    retiring: bool = False  # a rotated-out secret in its grace period: it may not administer


_INVALID = "Invalid API key. Send 'Authorization: Bearer crt_...' with an active Critique key."
_ROTATED = "This API key was rotated and its old secret's grace period has ended; use the new secret."


class Authenticator:
    """Looks keys up by hash. Results (found or not) are cached for `cache_ttl_s`, which is
    therefore the longest a revoked key keeps working on a replica that had it cached;
    `forget()` drops an entry at once (revocation in this process)."""

    def __init__(self, directory: KeyDirectory, cache_ttl_s: float = 5.0, max_entries: int = 50_000) -> None:
        self._directory = directory
        self._ttl = cache_ttl_s
        self._max = max_entries
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def identify(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        if token is None or not token.isascii():
            raise ApiError("invalid_api_key", _INVALID)
        key_hash = hash_key(token)
        hit = self._cache.get(key_hash)
        if hit is not None and hit[0] > time.monotonic():  # hot path: a key seen moments ago
            record = hit[1]
        elif not is_well_formed(token):
            raise ApiError("invalid_api_key", _INVALID)  # no store access for malformed keys
        else:
            record = await self._lookup(key_hash)
        if record is None or record.revoked or not hashes_match(record.key_hash, key_hash):
            raise ApiError("invalid_api_key", _INVALID)
        if record.retires_at_ms and time.time() * 1000 >= record.retires_at_ms:
            raise ApiError("invalid_api_key", _ROTATED)
        if record.expires_at_ms is not None and time.time() * 1000 >= record.expires_at_ms:
            raise key_expired(record.expires_at_ms)
        if record.retires_at_ms:  # the grace period keeps traffic flowing, not administration
            return Identity(record.account, record.key_id, record.scopes - ADMIN_SCOPES, retiring=True)
        return Identity(record.account, record.key_id, record.scopes)

    async def _lookup(self, key_hash: str) -> KeyRecord | None:
        now = time.monotonic()
        record = await self._directory.find_by_hash(key_hash)
        if self._ttl > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()  # bounded memory; a refill costs one lookup per key
            self._cache[key_hash] = (now + self._ttl, record)
        return record

    def forget(self, key_hash: str | None = None) -> None:
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)


def authorize(identity: Identity, any_of: frozenset[str]) -> None:
    if identity.scopes.isdisjoint(any_of):
        why = " (a rotated-out secret cannot administer: use the new secret)" if identity.retiring else ""
        raise ApiError(
            "insufficient_scope",
            f"This key lacks the scope for this route; it needs one of: {', '.join(sorted(any_of))}{why}",
        )
