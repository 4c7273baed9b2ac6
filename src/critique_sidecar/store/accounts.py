"""Operator actions on an account's credit balance (the pool shared with other products)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import keyspace as ks
from .errors import store_call


@dataclass(frozen=True, slots=True)
class Balance:
    balance: int  # micro-credits
    held: int  # micro-credits in open holds
    open_holds: int


class RedisAccounts:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def grant(self, account: str, micro_credits: int) -> int:
        """Add (or, negative, debit) credits; returns the new balance."""
        return int(await self._redis.hincrby(ks.account(ks.check_account(account)), "balance", micro_credits))

    async def balance(self, account: str) -> Balance:
        ks.check_account(account)
        balance, held = await self._redis.hmget(ks.account(account), "balance", "held")
        return Balance(int(balance or 0), int(held or 0), int(await self._redis.hlen(ks.holds(account))))


# -- provisioning API: the open holds themselves ------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenHold:
    request_id: str
    amount: int  # micro-credits
    expires_ms: int


@store_call
async def open_holds(redis: Any, account: str, limit: int = 1000) -> list[OpenHold]:
    """Up to `limit` open holds, soonest to expire first."""
    ks.check_account(account)
    rows = await redis.zrange(ks.hold_expiry(account), 0, limit - 1, withscores=True)
    if not rows:
        return []
    ids = [r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows]
    amounts = await redis.hmget(ks.holds(account), ids)
    return [
        OpenHold(i, int(a), int(score)) for i, a, (_, score) in zip(ids, amounts, rows, strict=True) if a is not None
    ]
