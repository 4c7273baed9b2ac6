"""Operator tokens in Redis, by SHA-256 (the token itself is never stored). Every create and
revoke is written to the operator audit stream."""

from __future__ import annotations

import time
from typing import Any

from ..core.keys import hash_key, hashes_match
from ..core.operator_tokens import OperatorToken, generate_token, is_well_formed, new_token_id
from . import audit
from . import keyspace as ks
from .errors import store_call
from .usage_records import as_text


def _record(data: dict[Any, Any]) -> OperatorToken:
    d = {as_text(k): as_text(v) for k, v in data.items()}
    return OperatorToken(
        token_id=d["id"],
        token_hash=d["hash"],
        name=d.get("name", ""),
        scopes=frozenset(s for s in d.get("scopes", "").split(",") if s),
        created_at=int(d.get("created_at", "0")),
        revoked=d.get("revoked") == "1",
    )


def token_json(t: OperatorToken) -> dict[str, Any]:
    return {
        "token_id": t.token_id,
        "name": t.name,
        "scopes": sorted(t.scopes),
        "created_at": t.created_at,
        "revoked": t.revoked,
    }


class RedisOperatorTokens:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    @store_call
    async def create(self, name: str, scopes: tuple[str, ...], change: audit.Change) -> tuple[str, OperatorToken]:
        """A new token; the caller shows it once."""
        token, token_id = generate_token(), new_token_id()
        record = OperatorToken(token_id, hash_key(token), name, frozenset(scopes), int(time.time()))
        await self._redis.hset(
            ks.operator_token(record.token_hash),
            mapping={"id": token_id, "hash": record.token_hash, "name": name, "scopes": ",".join(scopes),
                     "created_at": record.created_at, "revoked": "0"},
        )  # fmt: skip
        await self._redis.set(ks.operator_token_id(token_id), record.token_hash)
        await self._redis.sadd(ks.OPERATOR_TOKENS, token_id)
        await audit.append(
            self._redis, ks.OPERATOR_AUDIT, change, "operator_token.create",
            account=None, target=token_id, before=None, after=token_json(record),
        )  # fmt: skip
        return token, record

    @store_call
    async def by_id(self, token_id: str) -> OperatorToken | None:
        token_hash = await self._redis.get(ks.operator_token_id(token_id))
        if not token_hash:
            return None
        data = await self._redis.hgetall(ks.operator_token(as_text(token_hash)))
        return _record(data) if data else None

    @store_call
    async def list(self) -> list[OperatorToken]:
        ids = sorted(as_text(i) for i in await self._redis.smembers(ks.OPERATOR_TOKENS))
        records = [await self.by_id(i) for i in ids]
        return [r for r in records if r is not None]

    @store_call
    async def revoke(self, token_id: str, change: audit.Change) -> OperatorToken | None:
        before = await self.by_id(token_id)
        if before is None:
            return None
        await self._redis.hset(ks.operator_token(before.token_hash), "revoked", "1")
        after = await self.by_id(token_id)
        await audit.append(
            self._redis, ks.OPERATOR_AUDIT, change, "operator_token.revoke",
            account=None, target=token_id, before=token_json(before), after=after and token_json(after),
        )  # fmt: skip
        return after

    @store_call
    async def authenticate(self, token: str) -> OperatorToken | None:
        """The active token for a bearer value, else None. Looked up every time (no cache), so a
        revocation takes effect on the next request."""
        if not is_well_formed(token):
            return None
        token_hash = hash_key(token)
        data = await self._redis.hgetall(ks.operator_token(token_hash))
        if not data:
            return None
        record = _record(data)
        if record.revoked or not hashes_match(record.token_hash, token_hash):
            return None
        return record
