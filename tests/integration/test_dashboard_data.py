"""Usage data on a real Redis: the rollups settlement writes, the dashboard API over them
(Starlette app in-process, real Redis), activity pagination, the billing consumer group and
retention."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.core.money import format_credits
from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RECORD_FIELDS, RedisLedger, record_fields
from critique_sidecar.store.settings_store import RedisSettingsStore
from critique_sidecar.store.usage_export import UsageExporter
from critique_sidecar.store.usage_query import UsageQuery
from critique_sidecar.store.usage_records import SCHEMA, USAGE_ACCOUNTS, rebuild_registry, registered_accounts
from critique_sidecar.store.usage_retention import DAY_MS, UsageRetention
from critique_sidecar.web.app import WebContext, build_web_app
from critique_sidecar.web.dashboard import encode_cursor

NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
MODELS = ["deepseek/deepseek-v4-flash", "tencent/hy3-preview", "nvidia/nemotron-3-ultra-550b-a55b"]
_seq = iter(range(10**9))


def record(
    account: str,
    *,
    at: datetime = NOW,
    model: str = MODELS[0],
    key_id: str = "key_a",
    inp: int = 10,
    out: int = 5,
    credits: int = 1234,
) -> UsageRecord:
    n = next(_seq)
    return UsageRecord(
        request_id=f"req_{account}_{n}", account=account, key_id=key_id, model=model,
        input_tokens=inp, output_tokens=out, credits=credits, usd=str(Decimal(credits) / 10**8),
        price_version=f"v1/{model}/private", opt_in=False, estimated=False, status="ok", latency_ms=7,
        ts_ms=int(at.timestamp() * 1000), day=at.strftime("%Y-%m-%d"), month=at.strftime("%Y-%m"),
    )  # fmt: skip


async def stream_entries(r: aioredis.Redis, account: str) -> list[tuple[str, dict[str, str]]]:
    rows = await r.xrange(ks.usage_stream(account))
    return [(sid.decode(), {k.decode(): v.decode() for k, v in f.items()}) for sid, f in rows]


async def poll(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(what)


class Api:
    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http, self.headers = http, {"authorization": f"Bearer {key}"}

    async def get(self, **params: Any) -> httpx.Response:
        return await self.http.get(DASHBOARD_PATH, params=params, headers=self.headers)

    async def ok(self, **params: Any) -> dict[str, Any]:
        r = await self.get(**params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def http(redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    ctx = WebContext(
        Authenticator(RedisKeyStore(redis_client), cache_ttl_s=0), load_catalog(), clock=lambda: NOW,
        settings=RedisSettingsStore(redis_client), dashboard=UsageQuery(redis_client),
    )  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_web_app(ctx)), base_url="http://sidecar") as c:
        yield c


async def api_for(
    http: httpx.AsyncClient, r: aioredis.Redis, account: str, scopes: tuple[str, ...] = ("read:inference",)
) -> Api:
    key, _ = await RedisKeyStore(r).create(account, scopes, "dash")
    return Api(http, key)


# -- rollups ---------------------------------------------------------------------------


async def test_rollups_equal_the_sum_of_the_records(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    ledger = RedisLedger(redis_client)
    api = await api_for(http, redis_client, account)
    keys = [
        (await RedisKeyStore(redis_client).create(account, ("write:inference",), f"agent-{i}"))[1].key_id
        for i in range(3)
    ]
    rng = random.Random(5)
    written = []
    for _ in range(400):
        at = NOW - timedelta(days=rng.randrange(0, 7), minutes=rng.randrange(0, 600))
        rec = record(account, at=at, model=rng.choice(MODELS), key_id=rng.choice(keys),
                     inp=rng.randrange(0, 5000), out=rng.randrange(0, 3000), credits=rng.randrange(0, 10**7))  # fmt: skip
        assert (await ledger.settle(rec)).applied
        written.append(rec)
        if rng.random() < 0.1:  # a repeated settlement is neither recorded nor rolled up twice
            assert not (await ledger.settle(rec)).applied

    entries = await stream_entries(redis_client, account)
    assert len(entries) == len(written)
    # Sum the raw records independently of the rollups, by UTC day of ts_ms.
    per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    per_key: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for _, f in entries:
        day = datetime.fromtimestamp(int(f["ts_ms"]) / 1000, UTC).strftime("%Y-%m-%d")
        row = [int(f["credits"]), 1, int(f["input_tokens"]), int(f["output_tokens"])]
        for bucket in (per_day[day], per_model[f["model"]], per_key[f["key_id"]]):
            for i, v in enumerate(row):
                bucket[i] += v

    def shape(v: list[int]) -> dict[str, Any]:
        return {"credits": format_credits(v[0]), "requests": v[1], "input_tokens": v[2], "output_tokens": v[3]}

    data = await api.ok(days="7")
    assert data["days"] == 7 and data["start"] == "2026-11-20" and data["end"] == "2026-11-26"
    assert [d["date"] for d in data["daily"]] == [f"2026-11-{d}" for d in range(20, 27)]
    for d in data["daily"]:
        assert {k: d[k] for k in ("credits", "requests", "input_tokens", "output_tokens")} == shape(per_day[d["date"]])
    grand = [sum(v[i] for v in per_day.values()) for i in range(4)]
    assert data["totals"] == shape(grand)
    assert {
        m["model"]: {k: m[k] for k in ("credits", "requests", "input_tokens", "output_tokens")}
        for m in data["by_model"]
    } == {m: shape(v) for m, v in per_model.items()}
    assert {
        k["key_id"]: {f: k[f] for f in ("credits", "requests", "input_tokens", "output_tokens")} for k in data["by_key"]
    } == {k: shape(v) for k, v in per_key.items()}
    assert {k["key_id"]: k["name"] for k in data["by_key"]} == {k: f"agent-{i}" for i, k in enumerate(keys)}
    # Credits are exact: the decimal strings add up to the micro-credit sum.
    assert sum(Decimal(d["credits"]) for d in data["daily"]) == Decimal(grand[0]) / 10**6
    # The balance moved by exactly the charged sum, and the monthly spend is the month's records.
    assert data["balance"]["balance"] == format_credits(-grand[0])
    assert data["limits"]["monthly_credit_cap"]["spent"] == format_credits(grand[0])
    assert data["limits"]["daily_credit_cap"]["spent"] == format_credits(per_day["2026-11-26"][0])

    # 30- and 90-day views zero-fill the days without traffic and keep the same totals.
    for days in ("30", "90"):
        wide = await api.ok(days=days)
        assert len(wide["daily"]) == int(days) and wide["daily"][-1]["date"] == "2026-11-26"
        assert wide["totals"] == data["totals"]
        assert all(d["credits"] == "0.000000" and d["requests"] == 0 for d in wide["daily"][:-7])
    assert (await api.ok())["days"] == 30  # the default


async def test_limit_status_against_caps_and_floor(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    from critique_sidecar.core.account_settings import SettingsPatch

    await redis_client.hincrby(ks.account(account), "balance", 50_000_000)  # 50 credits
    await RedisSettingsStore(redis_client).patch(
        account,
        SettingsPatch.parse(
            {
                "daily_credit_cap": "4",
                "monthly_credit_cap": "100.5",
                "daily_request_cap": 3,
                "reserve_credits_for_review": "10",
            }
        ),
    )
    ledger = RedisLedger(redis_client)
    await ledger.settle(record(account, credits=1_000_000))
    await ledger.settle(record(account, credits=2_000_001))
    await ledger.settle(record(account, at=NOW - timedelta(days=1), credits=500_000))  # yesterday: month only
    await redis_client.hincrby(ks.day(account, "2026-11-26"), "admitted", 3)
    api = await api_for(http, redis_client, account)
    data = await api.ok(days="7")
    daily, monthly, requests = (
        data["limits"][k] for k in ("daily_credit_cap", "monthly_credit_cap", "daily_request_cap")
    )
    assert daily == {
        "unit": "credits", "window": "day", "spent": "3.000001", "cap": "4.000000", "remaining": "0.999999",
        "percent": "75.00", "reached": False, "resets_at": "2026-11-27T00:00:00Z",
    }  # fmt: skip
    assert monthly["spent"] == "3.500001" and monthly["cap"] == "100.500000" and monthly["remaining"] == "96.999999"
    assert monthly["percent"] == "3.48" and monthly["resets_at"] == "2026-12-01T00:00:00Z"
    assert requests == {
        "unit": "requests", "window": "day", "spent": 3, "cap": 3, "remaining": 0,
        "percent": "100.00", "reached": True, "resets_at": "2026-11-27T00:00:00Z",
    }  # fmt: skip
    assert data["balance"] == {
        "balance": "46.499999", "held": "0.000000", "reserve_floor": "10.000000", "available": "36.499999", "floor_reached": False,
    }  # fmt: skip
    assert data["limits"]["enabled"] is True and data["limits"]["block_when_cap_reached"] is True


# -- activity pagination -----------------------------------------------------------------


async def test_pagination_over_1000_records_returns_each_exactly_once_while_new_ones_arrive(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    ledger = RedisLedger(redis_client)
    for i in range(1050):
        await ledger.settle(record(account, credits=i + 1, key_id=f"key_{i % 4}"))
    api = await api_for(http, redis_client, account)

    written_during = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal written_during
        while not stop.is_set():
            await ledger.settle(record(account, credits=7))
            written_during += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    seen: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    try:
        while True:
            params: dict[str, Any] = {"view": "activity", "limit": 97}
            if cursor:
                params["cursor"] = cursor
            page = await api.ok(**params)
            pages += 1
            seen += page["data"]
            assert len(page["data"]) <= 97
            if not page["has_more"]:
                assert page["next_cursor"] is None
                break
            cursor = page["next_cursor"]
            before = written_during

            async def wrote_more(before: int = before) -> bool:
                return written_during > before

            await poll(wrote_more, "the writer to add a record between pages")
    finally:
        stop.set()
        await task

    assert pages >= 11 and written_during >= pages - 1
    ids = [r["id"] for r in seen]
    keyed = [tuple(map(int, i.split("-"))) for i in ids]
    assert keyed == sorted(keyed, reverse=True) and len(set(ids)) == len(ids)  # newest first, no repeats
    # Exactly the records that existed when the first page was read: none skipped, none of
    # the later ones slipped in between pages.
    first = keyed[0]
    everything = await stream_entries(redis_client, account)
    expected = [sid for sid, _ in reversed(everything) if tuple(map(int, sid.split("-"))) <= first]
    assert ids == expected and len(ids) >= 1050
    assert len(everything) - len(ids) >= written_during - 1  # the later ones really were written meanwhile
    stream_by_id = dict(everything)
    for r in seen[:50]:
        raw = stream_by_id[r["id"]]
        assert r["request_id"] == raw["request_id"] and r["credits"] == format_credits(int(raw["credits"]))
        assert set(r) == {name for name, _ in SCHEMA} | {"id", "ts"}
    # The newest page again starts with the records written meanwhile.
    newest = await api.ok(view="activity", limit="200")
    assert newest["data"][0]["id"] == everything[-1][0] and newest["has_more"] is True


async def test_bad_activity_and_summary_parameters_are_400(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    await RedisLedger(redis_client).settle(record(account))
    api = await api_for(http, redis_client, account)
    bad = [
        ({"days": "14"}, "days"), ({"days": "abc"}, "days"), ({"days": ""}, "days"), ({"days": "7.0"}, "days"),
        ({"view": "activity", "limit": "0"}, "limit"), ({"view": "activity", "limit": "201"}, "limit"),
        ({"view": "activity", "limit": "x"}, "limit"), ({"view": "activity", "limit": "-1"}, "limit"),
        ({"view": "activity", "cursor": "not-a-cursor!"}, "cursor"), ({"view": "activity", "cursor": ""}, "cursor"),
        ({"view": "activity", "cursor": "dTE6MTIz"}, "cursor"),  # base64 of "u1:123": not a stream id
        ({"view": "activity", "cursor": encode_cursor("1-0") + "A"}, "cursor"),
        ({"view": "nope"}, "view"),
    ]  # fmt: skip
    for params, param in bad:
        r = await api.get(**params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] == "invalid_request" and r.json()["error"]["param"] == param, params
    ok = await api.ok(view="activity", limit="200", cursor=encode_cursor("1-0"))
    assert ok["data"] == [] and ok["has_more"] is False
    assert len((await api.ok(view="activity", limit="1"))["data"]) == 1


async def test_dashboard_scopes_and_accounts(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    await RedisLedger(redis_client).settle(record(account, credits=5))
    other = account + "-other"
    await RedisLedger(redis_client).settle(record(other, credits=9))
    assert (await http.get(DASHBOARD_PATH)).status_code == 401
    writer = await api_for(http, redis_client, account, ("write:inference",))
    r = await writer.get()
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    admin = await api_for(http, redis_client, account, ("admin:inference",))
    assert (await admin.ok(days="7"))["totals"]["credits"] == "0.000005"
    mine = await (await api_for(http, redis_client, other)).ok(view="activity")
    assert [r["account"] for r in mine["data"]] == [other] and mine["data"][0]["credits"] == "0.000009"


# -- consumer group ----------------------------------------------------------------------


async def test_consumer_group_delivers_at_least_once_and_acks(redis_client: aioredis.Redis, account: str) -> None:
    ledger = RedisLedger(redis_client)
    recs = [record(account, credits=i) for i in range(10)]
    for rec in recs:
        await ledger.settle(rec)
    c1 = UsageExporter(redis_client, account, "billing", "c1", min_idle_ms=60_000)
    assert await c1.ensure_group() is True and await c1.ensure_group() is False

    first = await c1.read(4)
    assert [d.record["request_id"] for d in first] == [r.request_id for r in recs[:4]]
    assert not any(d.redelivered for d in first)
    # Not acknowledged (the consumer "crashed" before acking): the same records come again.
    again = await c1.read(4)
    assert [d.id for d in again] == [d.id for d in first] and all(d.redelivered for d in again)
    assert await c1.ack([first[0].id, first[1].id]) == 2
    rest = await c1.read(10)
    assert [d.record["request_id"] for d in rest] == [r.request_id for r in recs[2:]]
    assert [d.redelivered for d in rest] == [True, True] + [False] * 6
    assert await c1.ack([d.id for d in rest]) == 8
    assert await c1.read(10) == [] and await c1.pending_count() == 0

    # A dead consumer's unacknowledged records are taken over by another one (XAUTOCLAIM).
    more = [record(account, credits=100 + i) for i in range(3)]
    for rec in more:
        await ledger.settle(rec)
    taken = await c1.read(3)
    assert [d.record["request_id"] for d in taken] == [r.request_id for r in more]
    c2_patient = UsageExporter(redis_client, account, "billing", "c2", min_idle_ms=3_600_000)
    assert await c2_patient.read(5) == []  # not idle long enough to be taken over
    c2 = UsageExporter(redis_client, account, "billing", "c2", min_idle_ms=0)
    claimed = await c2.read(5)
    assert sorted(d.id for d in claimed) == sorted(d.id for d in taken) and all(d.redelivered for d in claimed)
    assert await c2.ack([d.id for d in claimed]) == 3 and await c1.pending_count() == 0

    # Deduplicating by request_id turns every delivery above into each charge exactly once.
    billed: dict[str, str] = {}
    for d in first + again + rest + taken + claimed:
        billed.setdefault(d.record["request_id"], d.record["credits"])
    assert billed == {r.request_id: format_credits(r.credits) for r in recs + more}

    # A second group is independent: it gets everything again.
    audit = UsageExporter(redis_client, account, "audit", "a1")
    await audit.ensure_group("0")
    assert len(await audit.read(100)) == 13


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRITIQUE_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "critique_sidecar.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_cli_export_prints_json_lines_and_acknowledges(
    redis_client: aioredis.Redis, redis_url: str, account: str
) -> None:
    recs = [record(account, credits=1_000_000 + i) for i in range(7)]
    for rec in recs:
        await RedisLedger(redis_client).settle(rec)
    base = ("usage", "export", "--account", account, "--group", "billing")

    peek = cli(redis_url, *base, "--count", "3", "--no-ack")
    assert peek.returncode == 0, peek.stderr
    lines = [json.loads(line) for line in peek.stdout.splitlines()]
    assert [x["request_id"] for x in lines] == [r.request_id for r in recs[:3]]
    assert lines[0]["credits"] == "1.000000" and lines[0]["input_tokens"] == 10 and lines[0]["redelivered"] is False
    assert set(lines[0]) == set(RECORD_FIELDS) | {"id", "ts", "redelivered"}

    out = cli(redis_url, *base, "--count", "5")  # the 3 unacked come again, then 2 new; all acked
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["request_id"] for x in got] == [r.request_id for r in recs[:5]]
    assert [x["redelivered"] for x in got] == [True] * 3 + [False] * 2
    last = [json.loads(line) for line in cli(redis_url, *base, "--count", "100").stdout.splitlines()]
    assert [x["request_id"] for x in last] == [r.request_id for r in recs[5:]]
    assert cli(redis_url, *base).stdout == ""
    assert (await redis_client.xpending(ks.usage_stream(account), "billing"))["pending"] == 0


# -- retention ---------------------------------------------------------------------------


async def add_old(r: aioredis.Redis, account: str, days_ago: float, n: int) -> list[str]:
    """Records as settlement writes them, but with stream ids `days_ago` in the past."""
    base = int(time.time() * 1000) - int(days_ago * DAY_MS)
    ids = []
    for i in range(n):
        rec = record(account, at=datetime.fromtimestamp(base / 1000, UTC))
        sid = f"{base}-{i}"
        fields = record_fields(rec)
        await r.xadd(ks.usage_stream(account), dict(zip(fields[::2], fields[1::2], strict=True)), id=sid)
        ids.append(sid)
    return ids


async def ids_left(r: aioredis.Redis, account: str) -> list[str]:
    return [sid for sid, _ in await stream_entries(r, account)]


async def test_retention_trims_old_acknowledged_records_but_never_unacknowledged_ones(
    redis_client: aioredis.Redis, account: str
) -> None:
    old = await add_old(redis_client, account, 40, 6)
    recent = []
    for _ in range(4):
        rec = record(account)
        await RedisLedger(redis_client).settle(rec)
        recent.append(rec.request_id)
    retention = UsageRetention(redis_client, retention_days=30)
    billing = UsageExporter(redis_client, account, "billing", "c1")
    await billing.ensure_group("0")

    got = await billing.read(3)  # old[0..2] delivered; old[0..1] acknowledged, old[2] pending
    assert [d.id for d in got] == old[:3]
    await billing.ack(old[:2])
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by == "billing" and result.min_id == old[2]
    assert (await ids_left(redis_client, account))[:4] == old[2:]

    await billing.ack([old[2]])  # now old[3..5] were never delivered: still kept
    await billing.read(1)
    await billing.ack([old[3]])
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by == "billing"
    assert (await ids_left(redis_client, account))[:2] == old[4:]

    await billing.ack([d.id for d in await billing.read(100)])  # everything delivered and acked
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by is None and result.length == 4
    left = await stream_entries(redis_client, account)
    assert [f["request_id"] for _, f in left] == recent  # younger than the cutoff: kept


async def test_retention_without_groups_is_by_age_and_every_group_counts(
    redis_client: aioredis.Redis, account: str
) -> None:
    old = await add_old(redis_client, account, 10, 5)
    newer = await add_old(redis_client, account, 2, 3)
    assert (await UsageRetention(redis_client, retention_days=30).trim(account)).deleted == 0
    result = await UsageRetention(redis_client, retention_days=5).trim(account)
    assert result.deleted == 5 and result.held_by is None and await ids_left(redis_client, account) == newer

    # A group that has read nothing yet holds everything, even when another group is done.
    other = account + "-g"
    old = await add_old(redis_client, other, 10, 5)
    done = UsageExporter(redis_client, other, "billing", "c1")
    await done.ensure_group("0")
    await done.ack([d.id for d in await done.read(10)])
    lazy = UsageExporter(redis_client, other, "analytics", "c1")
    await lazy.ensure_group("0")
    result = await UsageRetention(redis_client, retention_days=1).trim(other)
    assert result.deleted == 0 and result.held_by == "analytics" and await ids_left(redis_client, other) == old
    assert (await UsageRetention(redis_client, retention_days=1).trim("nobody-" + account)).deleted == 0


async def test_settlement_no_longer_caps_the_stream_length(redis_client: aioredis.Redis, account: str) -> None:
    ledger = RedisLedger(redis_client)
    for _ in range(250):
        await ledger.settle(record(account))
    assert await redis_client.xlen(ks.usage_stream(account)) == 250  # retention trims, settlement never does


async def test_account_registry_and_cli_trim(redis_client: aioredis.Redis, redis_url: str, account: str) -> None:
    await RedisLedger(redis_client).settle(record(account))
    assert account in await registered_accounts(redis_client)
    hidden = account + "-unregistered"
    await add_old(redis_client, hidden, 45, 3)
    assert hidden not in await registered_accounts(redis_client)
    assert hidden in await rebuild_registry(redis_client)
    assert await redis_client.sismember(USAGE_ACCOUNTS, hidden)

    out = cli(redis_url, "usage", "trim", "--account", hidden, "--json")  # default retention: 30 days
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["account"], row["deleted"], row["held_by_group"], row["length"]) == (hidden, 3, None, 0)
    listed = cli(redis_url, "usage", "accounts").stdout.split()
    assert account in listed and hidden in listed


async def test_one_refused_account_never_keeps_retention_from_the_others(
    redis_client: aioredis.Redis, account: str
) -> None:
    broken = account + "-broken"
    await redis_client.set(ks.usage_stream(broken), "not a stream")  # Redis refuses XTRIM on it
    await redis_client.sadd(USAGE_ACCOUNTS, broken)
    await add_old(redis_client, account, 40, 4)
    await redis_client.sadd(USAGE_ACCOUNTS, account)
    try:
        results = await UsageRetention(redis_client, retention_days=30).trim_all()
        trimmed = {r.account: r.deleted for r in results}
        assert trimmed[account] == 4 and broken not in trimmed
    finally:
        await redis_client.srem(USAGE_ACCOUNTS, broken)


async def test_sidecar_periodic_trim(redis_client: aioredis.Redis, account: str) -> None:
    await add_old(redis_client, account, 40, 4)
    await RedisLedger(redis_client).settle(record(account))  # registers the account
    retention = UsageRetention(redis_client, retention_days=30)
    task = asyncio.create_task(retention.run_forever(0.05))

    async def trimmed() -> bool:
        return int(await redis_client.xlen(ks.usage_stream(account))) == 1

    try:
        await poll(trimmed, "the periodic trim")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
