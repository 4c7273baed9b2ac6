"""The usage push worker: usage records -> CloudEvents, POSTed in batches to a billing system.

Reads every account's usage stream through one consumer group (CRITIQUE_USAGE_PUSH_GROUP, the
same reader as `usage export`: store/usage_export.py) and POSTs up to CRITIQUE_USAGE_PUSH_BATCH
records as one CloudEvents batch (structured JSON batch mode, content type
`application/cloudevents-batch+json`). Records are acknowledged only after a 2xx, so delivery is
at-least-once: a worker killed mid-batch sends that batch again when it restarts (its consumer
name is stable) or another worker takes it over after 60 s idle. The CloudEvent id is the
request id, unique per charge, so a receiver deduplicates by it (OpenMeter does).

Runs as `critique-sidecar usage push`, or as a background task of `serve` / `gateway` with
CRITIQUE_USAGE_PUSH_WORKER=true."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson

from ..config import Config
from ..core.cancellation import raise_if_cancelling
from ..core.stores import Delivery, UsageFeed, UsageFeeds

log = logging.getLogger(__name__)

EVENT_TYPE = "sh.critique.inference.usage"
CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_BACKOFF_S = 60.0


def cloudevent(record: dict[str, Any], source: str) -> dict[str, Any]:
    """One usage record (usage_records.record_json shape) as a structured CloudEvent."""
    data = {k: v for k, v in record.items() if k != "id"}  # the stream id is ours, not the business key
    return {
        "specversion": "1.0",
        "id": record["request_id"],
        "source": source,
        "type": EVENT_TYPE,
        "subject": record["account"],
        "time": record["ts"],
        "datacontenttype": "application/json",
        "data": data,
    }


class UsagePushWorker:
    def __init__(self, feeds: UsageFeeds, config: Config, client: httpx.AsyncClient | None = None) -> None:
        if not config.usage_push_url:
            raise ValueError("usage push needs CRITIQUE_USAGE_PUSH_URL")
        self.feeds = feeds
        self.config = config
        self.client = client or httpx.AsyncClient(timeout=30.0, trust_env=False, follow_redirects=False)
        self._exporters: dict[str, UsageFeed] = {}
        self._turn = 0  # which account goes first this round (fairness between accounts)
        self.pushed = 0

    async def _exporter(self, account: str) -> UsageFeed:
        exporter = self._exporters.get(account)
        if exporter is None:
            exporter = self.feeds.feed(account)
            await exporter.ensure_group("0")
            self._exporters[account] = exporter
        return exporter

    async def push_once(self) -> int:
        """Read up to one batch, POST it, acknowledge it after a 2xx; returns the records sent.
        Raises on a failed POST (nothing acknowledged: the batch comes back next time)."""
        accounts = await self.feeds.accounts()
        if not accounts:
            return 0
        self._turn = (self._turn + 1) % len(accounts)
        batch: list[tuple[UsageFeed, Delivery]] = []
        for account in accounts[self._turn :] + accounts[: self._turn]:
            room = self.config.usage_push_batch - len(batch)
            if room <= 0:
                break
            exporter = await self._exporter(account)
            batch += [(exporter, d) for d in await exporter.read(room)]
        if not batch:
            return 0
        body = orjson.dumps([cloudevent(d.record, self.config.usage_push_source) for _, d in batch])
        response = await self.client.post(
            self.config.usage_push_url, content=body, headers={"content-type": CONTENT_TYPE}
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"usage push endpoint answered HTTP {response.status_code}")
        by_exporter: dict[int, tuple[UsageFeed, list[str]]] = {}
        for exporter, d in batch:
            by_exporter.setdefault(id(exporter), (exporter, []))[1].append(d.id)
        for exporter, ids in by_exporter.values():
            await exporter.ack(ids)
        self.pushed += len(batch)
        return len(batch)

    async def run_forever(self) -> None:
        failures = 0
        try:
            while True:
                raise_if_cancelling()
                try:
                    sent = await self.push_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise_if_cancelling(exc)
                    failures += 1
                    delay = min(self.config.usage_push_interval_s * 2**failures, MAX_BACKOFF_S)
                    log.warning(
                        "usage push failed (%s); retrying in %.1fs", str(exc)[:200] or type(exc).__name__, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                if sent < self.config.usage_push_batch:
                    await asyncio.sleep(self.config.usage_push_interval_s)
        finally:
            await self.client.aclose()
