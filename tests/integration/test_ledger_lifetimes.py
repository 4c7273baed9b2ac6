"""How long the ledger's keys live, through the ledger the app builds from its default Config.

Lifetimes are money: a settled marker that expires before a journal replay charges the
request twice; day and month windows that expire early silently reset the caps and the
90-day dashboard. Nothing else notices a wrong lifetime until it has cost someone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from critique_sidecar.app import Components, build_components
from critique_sidecar.config import Config
from critique_sidecar.core.ledger import HoldRequest, UsageRecord
from critique_sidecar.store import keyspace as ks

DAY_S = 86_400
NOW_MS = 1_795_000_000_000
DAY, MONTH = "2026-11-18", "2026-11"
SLACK_S = 60  # the test's own duration


@pytest.fixture
async def components(redis_url: str, tmp_path: Path) -> AsyncIterator[Components]:
    c = build_components(Config(redis_url=redis_url, journal_path=tmp_path / "journal.log"))
    yield c
    await c.aclose()


def record(account: str, request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, account=account, key_id="key_t", model="deepseek/deepseek-v4-flash",
        input_tokens=10, output_tokens=20, credits=750, usd="0.0000075", price_version="v5.2",
        opt_in=False, estimated=False, status="ok", latency_ms=5, ts_ms=NOW_MS, day=DAY, month=MONTH,
    )  # fmt: skip


async def test_a_settled_request_is_remembered_for_seven_days(
    components: Components, redis_client: aioredis.Redis, account: str
) -> None:
    await redis_client.hset(ks.account(account), "balance", 1_000_000)
    ledger = components.redis_ledger
    first = await ledger.settle(record(account, "req_ttl"))
    ttl = await redis_client.ttl(ks.settled(account, "req_ttl"))
    assert 7 * DAY_S - SLACK_S <= ttl <= 7 * DAY_S
    again = await ledger.settle(record(account, "req_ttl"))  # a journal replay within the window
    assert (first.applied, again.applied, again.credits) == (True, False, 750)
    assert await redis_client.hget(ks.account(account), "balance") == str(1_000_000 - 750).encode()


async def test_day_and_month_windows_outlive_the_90_day_dashboard(
    components: Components, redis_client: aioredis.Redis, account: str
) -> None:
    await redis_client.hset(ks.account(account), "balance", 1_000_000)
    ledger = components.redis_ledger
    hold = HoldRequest(account, "req_win", 5_000, NOW_MS, NOW_MS + 900_000, DAY, MONTH)
    assert (await ledger.place_hold(hold)).code is None
    # Admission creates the day window (its request count): it must already live long.
    assert await redis_client.ttl(ks.day(account, DAY)) > 90 * DAY_S
    await ledger.settle(record(account, "req_win"))
    for key in (ks.day(account, DAY), ks.month(account, MONTH)):
        assert await redis_client.ttl(key) > 90 * DAY_S, key
