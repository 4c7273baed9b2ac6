"""The billing consumer's side of the usage streams: a Redis consumer-group reader.

Delivery is at-least-once. A record stays pending in its group until acknowledged (XACK); the
retention trim never removes pending or undelivered records (see usage_retention). `read()`
returns, in this order and up to `count` records:

1. this consumer's own pending records (delivered before, never acknowledged: e.g. the
   consumer died after receiving them) - re-read from the group's pending list;
2. other consumers' records pending for longer than `min_idle_ms` (XAUTOCLAIM moves them to
   this consumer: a dead consumer's work is taken over);
3. new records (XREADGROUP `>`).

Acknowledge only after the records are durably processed; anything not acknowledged comes
back. Consequently a record can be delivered more than once, and consumers must deduplicate
by `request_id`: it is unique per charge (settlement is idempotent by request id, so each
charge is written to the stream exactly once), so e.g. an upsert or a unique constraint on
`request_id` in the billing database makes redelivery harmless. The stream id (`id`) is
unique too but is not the business key.

Streams are per account; `usage_records.registered_accounts` lists the accounts that have
one (the way a consumer discovers accounts). Each account's group is independent: create it
once per account (`ensure_group`, done by `critique-sidecar usage export` too).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from ..core.stores import Delivery
from . import keyspace as ks
from .errors import store_call
from .usage_records import as_text, record_json, registered_accounts

__all__ = ["Delivery", "RedisUsageFeeds", "UsageExporter"]


class UsageExporter:
    def __init__(self, redis: Any, account: str, group: str, consumer: str = "c1", min_idle_ms: int = 60_000) -> None:
        if not group or not consumer:
            raise ValueError("group and consumer names must not be empty")
        self._redis = redis
        self.account = ks.check_account(account)
        self.stream = ks.usage_stream(account)
        self.group = group
        self.consumer = consumer
        self.min_idle_ms = min_idle_ms

    @store_call
    async def ensure_group(self, start_id: str = "0") -> bool:
        """Create the consumer group (and the stream if needed). `start_id` "0" delivers every
        retained record, "$" only records written from now on. False if it already existed."""
        try:
            await self._redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
            return True
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    @store_call
    async def read(self, count: int) -> list[Delivery]:
        if count < 1:
            raise ValueError("count must be >= 1")
        out: list[Delivery] = []
        seen: set[str] = set()
        gone: list[str] = []

        def add(rows: Iterable[Any], redelivered: bool) -> None:
            for sid, fields in rows:
                sid = as_text(sid)
                if sid in seen:
                    continue
                seen.add(sid)
                if not fields:  # the entry was deleted by hand (XDEL): nothing to deliver
                    gone.append(sid)
                    continue
                out.append(Delivery(sid, record_json(sid, fields), redelivered))

        # 1. own pending
        add(self._rows(await self._redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)), True)
        # 2. stale pending of other consumers
        if len(out) < count:
            claimed = await self._redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.min_idle_ms,
                start_id="0-0",
                count=count - len(out),
            )
            add(claimed[1], True)
        # 3. new records
        if len(out) < count:
            add(
                self._rows(
                    await self._redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count - len(out))
                ),
                False,
            )
        if gone:
            await self._redis.xack(self.stream, self.group, *gone)
        return out

    @staticmethod
    def _rows(reply: Any) -> list[Any]:
        rows: list[Any] = []
        for _, entries in reply or []:  # [[stream, [(id, fields), ...]]] (RESP2)
            rows += entries
        return rows

    @store_call
    async def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge processed records; returns how many were pending."""
        return int(await self._redis.xack(self.stream, self.group, *ids)) if ids else 0

    @store_call
    async def pending_count(self) -> int:
        summary = await self._redis.xpending(self.stream, self.group)
        return int(summary["pending"])


class RedisUsageFeeds:
    """core.stores.UsageFeeds: every account's usage stream, read by one consumer group."""

    def __init__(self, redis: Any, group: str, consumer: str) -> None:
        self._redis = redis
        self._group = group
        self._consumer = consumer

    async def accounts(self) -> list[str]:
        return await registered_accounts(self._redis)

    def feed(self, account: str) -> UsageExporter:
        return UsageExporter(self._redis, account, self._group, self._consumer)
