"""Operator actions on an account's credit balance (the pool shared with other products)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import keyspace as ks


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
