"""Operator actions on an account's credit balance (the pool shared with other products)."""

from __future__ import annotations

import time
from typing import Any

from ..core.stores import Balance, GrantView, OpenHold
from . import keyspace as ks
from .errors import store_call
from .scripts import register

__all__ = ["Balance", "GrantView", "OpenHold", "RedisAccounts", "parse_grant"]


def parse_grant(grant_id: str, value: str) -> GrantView | None:
    """One field of the grants hash (store/lua/lib/grants.lua) as a GrantView."""
    parts = value.split("|")
    if len(parts) != 9:
        return None
    remaining, held, priority, expires, effective, category, created, amount, state = parts
    return GrantView(
        grant_id=grant_id, category=category, amount=int(amount), remaining=int(remaining), held=int(held),
        priority=int(priority), effective_ms=int(effective), expires_ms=int(expires), created_ms=int(created),
        state=state,
    )  # fmt: skip


class RedisAccounts:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._grant = register(redis, "account_grant")

    async def grant(
        self,
        account: str,
        micro_credits: int,
        *,
        category: str = "paid",
        effective_ms: int = 0,
        expires_ms: int = 0,
        priority: int = 50,
        now_ms: int | None = None,
    ) -> int:
        """Add credits as a grant (or, negative, debit them from the grants in spend order, beyond
        what they have as debt); returns the new balance. No Idempotency-Key, no audit entry:
        tests and tools (the provisioning API uses store/credit_changes.py)."""
        ks.check_account(account)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        balance, _ = await self._grant(
            keys=[ks.account(account), ks.grants(account), ks.grants_done(account)],
            args=[micro_credits, category, effective_ms, expires_ms, priority, now],
        )
        return int(balance)

    @store_call
    async def grants(self, account: str) -> list[GrantView]:
        """The account's live grants, in spend order as stored (sorted by the caller's needs)."""
        ks.check_account(account)
        raw = await self._redis.hgetall(ks.grants(account))
        out = []
        for k, v in raw.items():
            g = parse_grant(k.decode() if isinstance(k, bytes) else str(k), v.decode() if isinstance(v, bytes) else v)
            if g is not None:
                out.append(g)
        out.sort(key=lambda g: g.spend_key())
        return out

    @store_call
    async def balance(self, account: str) -> Balance:
        ks.check_account(account)
        balance, held = await self._redis.hmget(ks.account(account), "balance", "held")
        return Balance(int(balance or 0), int(held or 0), int(await self._redis.hlen(ks.holds(account))))

    @store_call
    async def open_holds(self, account: str, limit: int = 1000) -> list[OpenHold]:
        """Up to `limit` open holds, soonest to expire first."""
        ks.check_account(account)
        rows = await self._redis.zrange(ks.hold_expiry(account), 0, limit - 1, withscores=True)
        if not rows:
            return []
        ids = [r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows]
        amounts = await self._redis.hmget(ks.holds(account), ids)
        return [  # a hold is "<micro-credits>:<key id>|<allocation>" (or a bare amount)
            OpenHold(i, int(a.split(b":", 1)[0].split(b"|", 1)[0]), int(score))
            for i, a, (_, score) in zip(ids, amounts, rows, strict=True)
            if a is not None
        ]
