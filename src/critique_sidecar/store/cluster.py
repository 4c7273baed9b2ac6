"""The Redis Cluster client, with commands that queue for a connection instead of failing.

redis-py's async RedisCluster fails a command at once (MaxConnectionsError) when its node
already has `max_connections` connections in use (default 100): a burst of more in-flight
requests than that turned into 503s, the same failure the standalone client had before it got
a blocking pool (app.connect_redis). Here at most `max_in_flight` commands run at a time
across the cluster (so never more on one node, whose pool is sized above it); the others wait
for a turn, up to `queue_timeout_s`, after which the command fails like any other unreachable
store (a ConnectionError, so StoreUnavailable and 503 upstream of here)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError


class BoundedRedisCluster(RedisCluster):
    def __init__(self, *args: Any, max_in_flight: int = 256, queue_timeout_s: float = 0.5, **kwargs: Any) -> None:
        kwargs.setdefault("max_connections", max_in_flight + 32)  # headroom: pipelines, topology refresh
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(max_in_flight)
        self._queue_timeout_s = queue_timeout_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._turns.locked():  # all turns taken: wait for one, boundedly
            try:
                await asyncio.wait_for(self._turns.acquire(), self._queue_timeout_s)
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis Cluster connection within {self._queue_timeout_s}s"
                ) from None
        else:
            await self._turns.acquire()  # returns at once
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._turns.release()
