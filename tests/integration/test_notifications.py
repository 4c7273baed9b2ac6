"""Budget notifications on real Redis: settle.lua queues one event per threshold, window and
account however many ledgers settle at once; the delivery worker signs, retries with backoff
against a real HTTP receiver, and dead-letters what never succeeds (readable with the CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from critique_sidecar.app import notify_worker
from critique_sidecar.config import Config
from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.core.ledger import HoldRequest, UsageRecord
from critique_sidecar.core.webhook_address import parse_networks
from critique_sidecar.core.webhook_signature import verify
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

from ..e2e.receivers import Received, Receiver, json_body

CREDIT = 1_000_000  # micro-credits
LOOPBACK = parse_networks("127.0.0.0/8")  # the receivers listen on 127.0.0.1


def record(account: str, n: int, credits: int = CREDIT, day: str = "2026-12-05", month: str = "2026-12") -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{account}_{day}_{n}", account=account, key_id="key_1", model="m", input_tokens=1,
        output_tokens=1, credits=credits, usd="0.01", price_version="v", opt_in=False, estimated=False,
        status="ok", latency_ms=1, ts_ms=1_796_000_000_000, day=day, month=month,
    )  # fmt: skip


@pytest.fixture
def db_url(redis_url: str) -> str:
    """A Redis database of this module's own (workers read every account, and the dead
    letters are global): emptied before each test."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    import redis

    with redis.Redis.from_url(url) as sync:
        sync.flushdb()
    return url


@pytest.fixture
async def r(db_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(db_url)
    yield client
    await client.aclose()


async def configure(
    r: aioredis.Redis, account: str, url: str | None = "https://hooks.example.com/x", **fields: Any
) -> str | None:
    await r.hset(ks.account(account), "balance", 50 * CREDIT)
    store = RedisSettingsStore(r)
    await store.patch(account, SettingsPatch.parse({"notify_webhook_url": url, **fields}, LOOPBACK))
    return await store.ensure_webhook_secret(account) if url else None


async def outbox(r: aioredis.Redis, account: str) -> list[dict[str, str]]:
    rows: Any = await r.xrange(ks.notify_outbox(account))
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]


async def test_concurrent_settlements_queue_each_threshold_once(r: aioredis.Redis, db_url: str, account: str) -> None:
    await configure(
        r, account, daily_credit_cap=20, monthly_credit_cap=30, daily_request_cap=10,
        notify_thresholds_percent=[50, 100], notify_low_balance_credits=15,
    )  # fmt: skip
    other = aioredis.Redis.from_url(db_url)  # a second "sidecar": its own connections
    a, b = RedisLedger(r, autopipeline=True), RedisLedger(other, autopipeline=False)
    try:
        results = await asyncio.gather(*((a if i % 2 else b).settle(record(account, i)) for i in range(40)))
        assert all(x.applied for x in results)
        await a.settle(record(account, 3))  # a replayed settlement: no second event
        events = await outbox(r, account)
        kinds = sorted((e["kind"], e["window"], e["threshold_percent"]) for e in events)
        assert kinds == [
            ("daily_credit_cap", "2026-12-05", "100"), ("daily_credit_cap", "2026-12-05", "50"),
            ("daily_request_cap", "2026-12-05", "100"), ("daily_request_cap", "2026-12-05", "50"),
            ("low_balance", "", ""),
            ("monthly_credit_cap", "2026-12", "100"), ("monthly_credit_cap", "2026-12", "50"),
        ]  # fmt: skip
        low = next(e for e in events if e["kind"] == "low_balance")
        assert int(low["balance"]) <= 15 * CREDIT and low["limit"] == str(15 * CREDIT)
        # A new UTC day is a new window for the daily caps (the month's markers stay).
        await a.settle(record(account, 0, credits=20 * CREDIT, day="2026-12-06"))
        new = (await outbox(r, account))[len(events) :]
        assert sorted((e["kind"], e["window"], e["threshold_percent"]) for e in new) == [
            ("daily_credit_cap", "2026-12-06", "100"), ("daily_credit_cap", "2026-12-06", "50"),
        ]  # fmt: skip
        # Low balance re-arms once a settlement finds the balance above the level again.
        await r.hincrby(ks.account(account), "balance", 100 * CREDIT)
        await a.settle(record(account, 1, credits=0, day="2026-12-07"))
        await r.hset(ks.account(account), "balance", 16 * CREDIT)
        await a.settle(record(account, 2, credits=2 * CREDIT, day="2026-12-07"))
        lows = [e for e in await outbox(r, account) if e["kind"] == "low_balance"]
        assert len(lows) == 2
    finally:
        await a.aclose()
        await other.aclose()


async def test_nothing_queued_without_a_webhook(r: aioredis.Redis, account: str) -> None:
    await configure(r, account, url=None, daily_credit_cap=1, notify_thresholds_percent=[50])
    await RedisLedger(r).settle(record(account, 1, credits=5 * CREDIT))
    assert await r.exists(ks.notify_outbox(account)) == 0


class Hooks(Receiver):
    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.times: dict[str, list[float]] = {}
        super().__init__(respond=self._respond)

    def _respond(self, got: Received) -> int:
        with self.lock:
            seen = self.times.setdefault(got.headers["critique-webhook-id"], [])
            seen.append(time.monotonic())
            return 500 if len(seen) <= self.fail_first else 204


def config(**kw: Any) -> Config:
    kw.setdefault("notify_allowed_networks", "127.0.0.0/8")
    return Config(notify_allow_http=True, notify_backoff_s=0.1, notify_max_attempts=4, **kw)


async def test_worker_retries_with_backoff_then_delivers_signed(r: aioredis.Redis, account: str) -> None:
    hooks = Hooks(fail_first=2)
    try:
        secret = await configure(r, account, url=hooks.url + "/h", daily_credit_cap=2, notify_thresholds_percent=[50])
        assert secret is not None
        await RedisLedger(r).settle(record(account, 1))
        worker = notify_worker(r, config(), consumer="t1")
        assert await worker.poll() == 1
        await worker.drain()
        assert (worker.delivered, worker.dead) == (1, 0)
        (times,) = hooks.times.values()
        assert len(times) == 3
        assert times[2] - times[1] > times[1] - times[0] >= 0.09  # exponential backoff: 0.1 s, then 0.2 s
        got = hooks.received()[-1]
        assert verify(
            secret, got.headers["critique-webhook-timestamp"], got.body, got.headers["critique-webhook-signature"]
        )
        assert not verify(secret, str(int(time.time()) - 3600), got.body, got.headers["critique-webhook-signature"])
        body = json_body(got)
        assert body["kind"] == "daily_credit_cap" and body["threshold_percent"] == 50 and body["used"] == "1.000000"
        assert (
            body["limit"] == "2.000000"
            and body["window"] == "2026-12-05"
            and body["type"] == "budget.threshold_crossed"
        )
        assert await worker.poll(pending=True) == 0  # acknowledged: nothing comes back
        await worker.client.aclose()
    finally:
        hooks.close()


async def test_undeliverable_goes_to_the_dead_letters(r: aioredis.Redis, db_url: str, account: str) -> None:
    hooks = Hooks(fail_first=100)
    try:
        await configure(r, account, url=hooks.url + "/h", daily_credit_cap=2, notify_thresholds_percent=[50])
        await RedisLedger(r).settle(record(account, 1))
        worker = notify_worker(r, config(), consumer="t1")
        await worker.poll()
        await worker.drain()
        assert (worker.delivered, worker.dead) == (0, 1)
        assert len(hooks.received()) == 4  # notify_max_attempts
        await worker.client.aclose()
        env = {**os.environ, "CRITIQUE_REDIS_URL": db_url}
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "critique_sidecar.cli", "notify", "dead-letters", "--json", "--count", "20"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        dead = [json.loads(line) for line in out.stdout.splitlines()]
        mine = [d for d in dead if d["account"] == account]
        assert len(mine) == 1 and mine[0]["attempts"] == 4 and mine[0]["last_error"] == "HTTP 500"
        assert mine[0]["event"]["kind"] == "daily_credit_cap"
        assert await r.xpending(ks.notify_outbox(account), "webhooks") == {
            "pending": 0, "min": None, "max": None, "consumers": []
        }  # fmt: skip
    finally:
        hooks.close()


async def test_http_webhooks_refused_unless_allowed(r: aioredis.Redis, account: str) -> None:
    hooks = Hooks(fail_first=0)
    try:
        await configure(r, account, url=hooks.url + "/h", daily_credit_cap=2, notify_thresholds_percent=[50])
        await RedisLedger(r).settle(record(account, 1))
        strict = Config(notify_backoff_s=0.1, notify_allowed_networks="127.0.0.0/8")
        worker = notify_worker(r, strict, consumer="t1")
        await worker.poll()
        await worker.drain()
        assert hooks.received() == [] and worker.dead == 1
        await worker.client.aclose()
    finally:
        hooks.close()


async def dead_letters(db_url: str, account: str) -> list[dict[str, Any]]:
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "critique_sidecar.cli", "notify", "dead-letters", "--json", "--count", "50"],
        env={**os.environ, "CRITIQUE_REDIS_URL": db_url}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [d for d in map(json.loads, out.stdout.splitlines()) if d["account"] == account]


async def test_private_destinations_are_dead_lettered_and_allowed_ones_delivered(
    r: aioredis.Redis, db_url: str
) -> None:
    """One real worker, one real receiver on 127.0.0.1. Allowed 127.0.0.0/8: the literal
    address is delivered. Refused at once (no retries, the reason in the dead letter): a
    literal private address stored before the settings check existed, and a host name that
    resolves to loopback (as a rebinding DNS answer would) when only 127.0.0.2/32 is allowed."""
    hooks = Hooks(fail_first=0)
    port = hooks.url.rsplit(":", 1)[1]
    try:
        cases = {
            "acct-ok": (hooks.url + "/h", "127.0.0.0/8"),
            "acct-ten": ("http://10.1.2.3:9/h", "127.0.0.0/8"),
            "acct-name": (f"http://localhost:{port}/h", "127.0.0.2/32"),
        }
        for account, (url, _) in cases.items():
            await configure(
                r, account, url="https://hooks.example.com/x", daily_credit_cap=2, notify_thresholds_percent=[50]
            )
            await r.hset(ks.settings(account), "notify_url", url)  # as stored before (or resolved later)
            await RedisLedger(r).settle(record(account, 1))
        for account, (_, allowed) in cases.items():
            worker = notify_worker(r, config(notify_allowed_networks=allowed), consumer="t1")
            await worker.poll(accounts=[account])
            await worker.drain()
            await worker.client.aclose()
            assert (worker.delivered, worker.dead) == ((1, 0) if account == "acct-ok" else (0, 1)), account
        assert [json_body(g)["account"] for g in hooks.received()] == ["acct-ok"]
        assert await dead_letters(db_url, "acct-ok") == []
        [ten] = await dead_letters(db_url, "acct-ten")
        assert ten["attempts"] == 1 and ten["last_error"] == (
            "webhook address refused: 10.1.2.3 is not a public address (private)"
            " (allow networks with CRITIQUE_NOTIFY_ALLOWED_NETWORKS)"
        )
        [name] = await dead_letters(db_url, "acct-name")
        assert name["attempts"] == 1 and name["last_error"].startswith(
            "webhook address refused: localhost resolves to "
        )
        assert "loopback" in name["last_error"]
    finally:
        hooks.close()


async def test_running_worker_is_woken_by_the_settlement(r: aioredis.Redis, account: str) -> None:
    """An event queued after the worker's sweep is delivered at once (the wake-up channel),
    not at the next sweep 30 s later."""
    hooks = Hooks(fail_first=0)
    try:
        await configure(r, account, url=hooks.url + "/h", daily_credit_cap=2, notify_thresholds_percent=[50])
        worker = notify_worker(r, config(), consumer="t1")
        task = asyncio.create_task(worker.run_forever())
        try:
            await until(lambda: worker.sweeps == 1, "the first sweep")
            await until(subscribed(r), "the wake-up subscription")
            started = time.monotonic()
            await RedisLedger(r).settle(record(account, 1))
            await until(lambda: bool(hooks.received()), "delivery after the wake-up", timeout=10)
            assert time.monotonic() - started < 10
            assert worker.sweeps == 1  # found by the announcement, not by a second sweep
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        hooks.close()


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    """Poll a condition (sync, or a coroutine function) until true."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not reached in {timeout}s")


def subscribed(r: aioredis.Redis) -> Any:
    async def check() -> bool:
        return dict(await r.pubsub_numsub(ks.NOTIFY_WAKE)).get(ks.NOTIFY_WAKE.encode(), 0) > 0

    return check


async def test_a_wrong_type_outbox_skips_notifications_not_the_charge(r: aioredis.Redis, account: str) -> None:
    await configure(r, account, daily_credit_cap=2, notify_thresholds_percent=[50])
    await r.set(ks.notify_outbox(account), "not a stream")
    result = await RedisLedger(r).settle(record(account, 1))
    assert result.applied and await r.hget(ks.account(account), "balance") == str(49 * CREDIT).encode()
    assert await r.get(ks.notify_outbox(account)) == b"not a stream"


async def test_a_tripped_spend_rate_is_announced_once_per_window_and_delivered_signed(
    r: aioredis.Redis, account: str
) -> None:
    """A runaway loop hits its spend rate many times a second; the webhook hears of it once per
    limit, key and window, signed, naming the limit."""
    hooks = Hooks(fail_first=0)
    ledger = RedisLedger(r)
    try:
        secret = await configure(r, account, url=hooks.url + "/h", credits_per_minute=2)
        assert secret is not None
        keys = RedisKeyStore(r)
        _, key = await keys.create(account, ("write:inference",))
        await keys.set_controls(account, key.key_id, KeyControls(credits_per_hour=3 * CREDIT))
        minute = 1_796_000_040_000  # 2026-11-30 00:54:00 UTC, a minute's start
        hour = minute - 54 * 60_000
        codes = []
        for i in range(30):  # ten requests a minute, each held at 1.5 credits and charged 1
            at = minute + (i // 10) * 60_000 + i
            hold = HoldRequest(
                account, f"req_{i}", 3 * CREDIT // 2, at, at + 60_000, "2026-11-30", "2026-11", key.key_id
            )
            result = await ledger.place_hold(hold)
            codes.append(result.code)
            if result.code is None:
                charged = replace(record(account, i), request_id=hold.request_id, key_id=key.key_id, ts_ms=at)
                await ledger.settle(charged)
        # Per minute: the first is admitted, the second trips the account's rate (1 + 1.5 > 2);
        # in the third minute the key's hour is full (1 + 1 + 1.5 > 3).
        assert codes == (
            [None] + ["credits_per_minute_reached"] * 9
            + [None] + ["credits_per_minute_reached"] * 9
            + ["key_credits_per_hour_reached"] * 10
        )  # fmt: skip
        events = await outbox(r, account)
        assert sorted((e["scope"], e["kind"], e["window"]) for e in events) == [
            ("account", "credits_per_minute", str(minute)),
            ("account", "credits_per_minute", str(minute + 60_000)),
            ("key", "credits_per_hour", str(hour)),
        ]
        worker = notify_worker(r, config(), consumer="t1")
        assert await worker.poll() == 3
        await worker.drain()
        assert (worker.delivered, worker.dead) == (3, 0)
        bodies = {}
        for got in hooks.received():
            signature = got.headers["critique-webhook-signature"]
            assert verify(secret, got.headers["critique-webhook-timestamp"], got.body, signature)
            body = json_body(got)
            bodies[body["limit_name"], body["window_start"]] = body
        first = bodies["account:credits_per_minute", "2026-11-30T00:54:00Z"]
        assert (first["type"], first["limit"], first["used"], first["key_id"]) == (
            "limit.tripped",
            "2.000000",
            "2.500000",
            None,
        )  # used: the minute's settled credit plus the refused request's hold
        hourly = bodies["key:credits_per_hour", "2026-11-30T00:00:00Z"]
        assert (hourly["key_id"], hourly["limit"], hourly["used"]) == (key.key_id, "3.000000", "3.500000")
        assert len({b["id"] for b in bodies.values()}) == 3
        await worker.client.aclose()
    finally:
        await ledger.aclose()
        hooks.close()
