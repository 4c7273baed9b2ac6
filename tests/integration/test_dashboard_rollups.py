"""The dashboard API's summary on real Redis (Starlette app in process): the rollups settlement
writes add up to the records exactly, per day, model and key, and the limit status against the
account's caps and reserve floor."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import redis.asyncio as aioredis

from critique_sidecar.core.endpoints import NAMES
from critique_sidecar.core.money import format_credits
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

from .usage_kit import MODELS, NOW, api_for, record, stream_entries


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
                     inp=rng.randrange(0, 5000), out=rng.randrange(0, 3000), credits=rng.randrange(0, 10**7),
                     endpoint=rng.choice(NAMES))  # fmt: skip
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
    per_endpoint: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for _, f in entries:
        day = datetime.fromtimestamp(int(f["ts_ms"]) / 1000, UTC).strftime("%Y-%m-%d")
        row = [int(f["credits"]), 1, int(f["input_tokens"]), int(f["output_tokens"])]
        for bucket in (per_day[day], per_model[f["model"]], per_key[f["key_id"]], per_endpoint[f["endpoint"]]):
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
    assert {
        e["endpoint"]: {f: e[f] for f in ("credits", "requests", "input_tokens", "output_tokens")}
        for e in data["by_endpoint"]
    } == {e: shape(v) for e, v in per_endpoint.items()}
    assert len(per_endpoint) == len(NAMES)  # every endpoint charged, each its own row
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
        "mechanism": "cap", "label": "Daily credit cap", "unit": "credits", "window": "day", "spent": "3.000001", "cap": "4.000000", "remaining": "0.999999",
        "percent": "75.00", "reached": False, "resets_at": "2026-11-27T00:00:00Z",
    }  # fmt: skip
    assert monthly["spent"] == "3.500001" and monthly["cap"] == "100.500000" and monthly["remaining"] == "96.999999"
    assert monthly["percent"] == "3.48" and monthly["resets_at"] == "2026-12-01T00:00:00Z"
    assert requests == {
        "mechanism": "cap", "label": "Daily request cap", "unit": "requests", "window": "day", "spent": 3, "cap": 3, "remaining": 0,
        "percent": "100.00", "reached": True, "resets_at": "2026-11-27T00:00:00Z",
    }  # fmt: skip
    assert data["balance"] == {
        "balance": "46.499999", "held": "0.000000", "reserve_floor": "10.000000", "available": "36.499999", "floor_reached": False,
    }  # fmt: skip
    assert data["limits"]["enabled"] is True and data["limits"]["block_when_cap_reached"] is True
