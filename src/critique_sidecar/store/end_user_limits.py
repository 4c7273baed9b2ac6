"""End users' own limits in Redis: one hash per end user that has any
(keyspace.end_user_limits), read by place_hold.lua beside the account's defaults."""

from __future__ import annotations

from typing import Any

from . import keyspace as ks
from .errors import store_call
from .usage_records import as_text


class RedisEndUserLimits:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    @store_call
    async def get(self, account: str, end_user: str) -> dict[str, str]:
        data = await self._redis.hgetall(ks.end_user_limits(ks.check_account(account), end_user))
        return {as_text(k): as_text(v) for k, v in data.items()}

    @store_call
    async def change(self, account: str, end_user: str, to_set: dict[str, str], to_delete: list[str]) -> None:
        key = ks.end_user_limits(ks.check_account(account), end_user)
        pipe = self._redis.pipeline(transaction=True)  # one slot: the account's
        if to_delete:
            pipe.hdel(key, *to_delete)
        if to_set:
            pipe.hset(key, mapping=to_set)
        await pipe.execute()
