"""Retention of the usage streams: old records go, records a consumer still needs never do.

Rule: an entry is removed when it is older than the retention period (server clock, i.e. its
stream id) AND every consumer group of the stream is done with it: it is older than the group's
oldest pending (delivered, unacknowledged) entry, and it has been delivered to the group
(it is at or before the group's last-delivered id). One Lua script decides and trims
(`lua/usage_trim.lua`), so a group cannot move between the decision and the trim.

Consequence: a consumer group that stops acknowledging holds its stream back. The trim reports
which group held it back, and the sidecar logs a warning once a stream is longer than
`usage_stream_maxlen`. Delete an abandoned group (`XGROUP DESTROY`) to release its records.
With no consumer group at all, retention is by age alone.

Settlement (`settle.lua`) only appends; trimming happens here: periodically in the sidecar
(`usage_trim_interval_s`) and on demand with `critique-sidecar usage trim`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from ..core.errors import StoreUnavailable
from . import keyspace as ks
from .errors import raise_if_cancelling, store_call
from .scripts import register
from .usage_records import as_text, registered_accounts

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TrimResult:
    account: str
    deleted: int
    min_id: str  # the lowest id that may remain
    held_by: str | None  # the consumer group that kept records older than the cutoff, if any
    length: int  # entries left


class UsageRetention:
    def __init__(self, redis: Any, retention_days: float, warn_length: int | None = None) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be > 0")
        self._redis = redis
        self.retention_ms = int(retention_days * DAY_MS)
        self._warn_length = warn_length
        self._trim = register(redis, "usage_trim")

    @store_call
    async def trim(self, account: str, retention_ms: int | None = None) -> TrimResult:
        stream = ks.usage_stream(ks.check_account(account))
        ms = self.retention_ms if retention_ms is None else retention_ms
        deleted, min_id, holder = await self._trim(keys=[stream], args=[ms])
        length = int(await self._redis.xlen(stream))
        result = TrimResult(account, int(deleted), as_text(min_id), as_text(holder) or None, length)
        if self._warn_length is not None and length > self._warn_length:
            log.warning(
                "usage stream of account %s has %d records (> %d)%s: unacknowledged records are kept",
                account, length, self._warn_length,
                f"; consumer group {result.held_by!r} is behind" if result.held_by else "",
            )  # fmt: skip
        return result

    async def trim_all(self) -> list[TrimResult]:
        """Trim every registered account's stream (see usage_records.register_account). An
        account whose trim Redis refuses (its key holds another type) is logged and skipped, so
        it never keeps retention from the other accounts; a store outage ends the round."""
        results = []
        for account in await registered_accounts(self._redis):
            raise_if_cancelling()  # a round may be long: stop between accounts when asked
            try:
                results.append(await self.trim(account))
            except StoreUnavailable as exc:
                if exc.detail != "ResponseError":
                    raise
                log.warning("usage retention: account %s skipped: Redis refused its trim", account)
        return results

    async def run_forever(self, interval_s: float) -> None:
        """The sidecar's periodic trim. Every replica may run it: trimming is idempotent."""
        while True:
            raise_if_cancelling()
            try:
                results = await self.trim_all()
                deleted = sum(r.deleted for r in results)
                if deleted:
                    log.info("usage retention: trimmed %d records from %d streams", deleted, len(results))
            except (TimeoutError, StoreUnavailable, RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                log.warning("usage retention trim failed (%s); retrying next interval", type(exc).__name__)
            except Exception as exc:
                raise_if_cancelling(exc)
                log.exception("usage retention trim failed")
            await asyncio.sleep(interval_s)
