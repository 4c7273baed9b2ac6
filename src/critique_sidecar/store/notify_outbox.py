"""The budget-notification outbox: per-account streams settle.lua appends events to, read by
the delivery worker through one consumer group, and the dead-letter list.

Events are queued atomically with the settlement that crossed a threshold (exactly once per
threshold, window and account); delivery is at-least-once: an event is acknowledged only
after a 2xx or after it went to the dead-letter list. A worker that dies leaves its events
pending: its own restart re-reads them (same consumer name), another worker takes them over
once they have been idle `min_idle_ms` (a worker retrying an event refreshes its idle time)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..core.account_settings import H_NOTIFY_SECRET, H_NOTIFY_URL
from ..core.cancellation import raise_if_cancelling
from ..core.stores import Notification
from . import keyspace as ks
from .usage_records import as_text, registered_accounts

__all__ = ["DEAD_MAX", "GROUP", "Notification", "NotifyOutbox", "dead_letters"]
log = logging.getLogger(__name__)

GROUP = "webhooks"
DEAD_MAX = 10_000  # dead letters kept (newest first)


class NotifyOutbox:
    def __init__(self, redis: Any, consumer: str, min_idle_ms: int = 15 * 60_000) -> None:
        self._redis = redis
        self.consumer = consumer
        self.min_idle_ms = min_idle_ms
        self._groups: set[str] = set()

    async def accounts(self) -> list[str]:
        return await registered_accounts(self._redis)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def read(self, account: str, count: int, pending: bool) -> list[Notification]:
        """New events (pending=False), or this consumer's own pending ones and other
        consumers' stale ones (pending=True, at start and then now and again)."""
        stream = ks.notify_outbox(account)
        await self._ensure_group(stream)
        rows: list[Any] = []
        if pending:
            for _, entries in await self._redis.xreadgroup(GROUP, self.consumer, {stream: "0"}, count=count) or []:
                rows += entries
            claimed = await self._redis.xautoclaim(
                stream, GROUP, self.consumer, min_idle_time=self.min_idle_ms, start_id="0-0", count=count
            )
            rows += claimed[1]
        else:
            for _, entries in await self._redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count) or []:
                rows += entries
        out: list[Notification] = []
        for sid, fields in rows:
            if fields:
                out.append(Notification(account, as_text(sid), {as_text(k): as_text(v) for k, v in fields.items()}))
        return out

    async def webhook(self, account: str) -> tuple[str | None, str | None]:
        """(url, secret) as configured now."""
        url, secret = await self._redis.hmget(ks.settings(account), H_NOTIFY_URL, H_NOTIFY_SECRET)
        return (as_text(url) if url else None), (as_text(secret) if secret else None)

    async def touch(self, n: Notification) -> None:
        """Still working on it (between retries): reset its idle time so no one takes it over."""
        await self._redis.xclaim(ks.notify_outbox(n.account), GROUP, self.consumer, 0, [n.stream_id], justid=True)

    async def ack(self, n: Notification) -> None:
        await self._redis.xack(ks.notify_outbox(n.account), GROUP, n.stream_id)

    async def dead_letter(self, n: Notification, attempts: int, error: str) -> None:
        entry = {
            "event": n.payload(),
            "account": n.account,
            "attempts": attempts,
            "last_error": error[:300],
            "dead_at_ms": int(time.time() * 1000),
        }
        await self._redis.lpush(ks.NOTIFY_DEAD, orjson.dumps(entry))
        await self._redis.ltrim(ks.NOTIFY_DEAD, 0, DEAD_MAX - 1)
        await self.ack(n)

    async def wakeups(self) -> AsyncIterator[str | None]:
        """Accounts settle.lua announces on NOTIFY_WAKE as it queues their events; None after each
        (re)subscription, since announcements may have been missed meanwhile."""
        while True:
            raise_if_cancelling()
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(ks.NOTIFY_WAKE)
                yield None
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        account = ks.account_of_notify_outbox(data.decode() if isinstance(data, bytes) else str(data))
                        if account:
                            yield account
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the worker's periodic sweep covers what is missed meanwhile
                raise_if_cancelling(exc)
                log.warning("notification wake-ups interrupted (%s); retrying", type(exc).__name__)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(1.0)


async def dead_letters(redis: Any, count: int) -> list[dict[str, Any]]:
    """The newest `count` dead letters."""
    return [orjson.loads(raw) for raw in await redis.lrange(ks.NOTIFY_DEAD, 0, count - 1)]
