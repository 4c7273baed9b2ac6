"""Idempotent credit grants and debits: one Lua script (credit_change.lua) per change, in the
account's slot, applies the change, remembers its result under the Idempotency-Key and writes
the audit entry, all at once. So a change is never applied twice (concurrent retries included:
the script runs alone) and never applied without its audit entry."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from ..core.stores import CreditChangeResult, GrantTerms, fingerprint
from . import audit
from . import keyspace as ks
from .errors import store_call
from .scripts import register
from .usage_records import as_text

__all__ = ["CreditChangeResult", "RedisCreditChanges", "fingerprint"]


class RedisCreditChanges:
    def __init__(self, redis: Any, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._script = register(redis, "credit_change")

    @store_call
    async def apply(
        self,
        account: str,
        delta: int,
        idempotency_key: str,
        request_fingerprint: str,
        change: audit.Change,
        action: str,
        terms: GrantTerms | None = None,
        now_ms: int | None = None,
    ) -> CreditChangeResult:
        ks.check_account(account)
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        fields = audit.static_fields(change, action, account, None, idempotency_key)
        t = terms or GrantTerms()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        status, before, after, audit_id, ts_ms, grant_id = await self._script(
            keys=[
                ks.account(account), ks.idempotency(account, digest), ks.audit(account), ks.grants(account),
                ks.grants_done(account),
            ],
            args=[
                delta, request_fingerprint, self._ttl_s, orjson.dumps(fields), "1" if delta < 0 else "0",
                t.category, t.effective_ms, t.expires_ms, t.priority, now,
            ],
        )  # fmt: skip
        return CreditChangeResult(
            as_text(status), int(before), int(after), as_text(audit_id), int(ts_ms), as_text(grant_id)
        )
