"""The budget-notification outbox: per-account streams settle.lua appends events to, read by
the delivery worker through one consumer group, and the dead-letter list.

Events are queued atomically with the settlement that crossed a threshold (exactly once per
threshold, window and account); delivery is at-least-once: an event is acknowledged only
after a 2xx or after it went to the dead-letter list. A worker that dies leaves its events
pending: its own restart re-reads them (same consumer name), another worker takes them over
once they have been idle `min_idle_ms` (a worker retrying an event refreshes its idle time)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..core.account_settings import H_NOTIFY_SECRET, H_NOTIFY_URL
from ..core.money import format_credits
from . import keyspace as ks
from .usage_records import as_text, registered_accounts

GROUP = "webhooks"
DEAD_MAX = 10_000  # dead letters kept (newest first)


@dataclass(frozen=True, slots=True)
class Notification:
    account: str
    stream_id: str
    fields: dict[str, str]

    @property
    def event_id(self) -> str:
        """Stable per threshold, window and account (the same on every retry)."""
        f = self.fields
        if f.get("kind") == "low_balance":  # once per fall below the level: the stream id tells falls apart
            key = f"{self.account}|low_balance|{self.stream_id}"
        else:
            key = f"{self.account}|{f.get('kind')}|{f.get('window')}|{f.get('threshold_percent')}"
        return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def payload(self) -> dict[str, Any]:
        """The webhook body (JSON). Credit amounts are exact 6-decimal strings; the daily
        request cap counts requests (integers)."""
        f = self.fields
        kind = f.get("kind", "")
        body: dict[str, Any] = {
            "id": self.event_id,
            "type": "budget.low_balance" if kind == "low_balance" else "budget.threshold_crossed",
            "account": self.account,
            "kind": kind,
            "balance": format_credits(int(f.get("balance") or 0)),
            "request_id": f.get("request_id"),
            "created_at_ms": int(f.get("ts_ms") or 0),
        }
        used, limit = int(f.get("used") or 0), int(f.get("limit") or 0)
        if kind == "low_balance":
            body["level"] = format_credits(limit)
        else:
            amount = (lambda v: v) if kind == "daily_request_cap" else format_credits
            body.update(
                window=f.get("window"),
                threshold_percent=int(f.get("threshold_percent") or 0),
                used=amount(used),
                limit=amount(limit),
            )
        return body


class NotifyOutbox:
    def __init__(self, redis: Any, consumer: str, min_idle_ms: int = 15 * 60_000) -> None:
        self._redis = redis
        self.redis = redis
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


async def dead_letters(redis: Any, count: int) -> list[dict[str, Any]]:
    """The newest `count` dead letters."""
    return [orjson.loads(raw) for raw in await redis.lrange(ks.NOTIFY_DEAD, 0, count - 1)]
