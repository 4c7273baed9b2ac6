"""Operator actions on an account's credit balance (the pool shared with other products)."""

from __future__ import annotations

from typing import Any

from ..core.stores import Balance, OpenHold
from . import keyspace as ks
from .errors import store_call

__all__ = ["Balance", "OpenHold", "RedisAccounts"]


class RedisAccounts:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def grant(self, account: str, micro_credits: int) -> int:
        """Add (or, negative, debit) credits; returns the new balance."""
        return int(await self._redis.hincrby(ks.account(ks.check_account(account)), "balance", micro_credits))

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
        return [  # a hold is "<micro-credits>:<key id>" (or a bare amount)
            OpenHold(i, int(a.split(b":", 1)[0]), int(score))
            for i, a, (_, score) in zip(ids, amounts, rows, strict=True)
            if a is not None
        ]
