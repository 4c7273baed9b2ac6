"""Usage by end user on real Redis (the dashboard app in process): settlement's per-day end-user
rollups add up to the records exactly, the summary's top 10 and the prefix search rank them by
credits, and an account whose requests name no end user gets no end-user keys at all."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis.asyncio as aioredis

from critique_sidecar.core.money import format_credits
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.redis_ledger import RedisLedger

from .usage_kit import NOW, api_for, record, stream_entries

# Ids that share prefixes, hold the rollup's own separator, quotes, non-ASCII and the longest.
END_USERS = [
    *(f"team-a/user-{i}" for i in range(12)),
    *(f"team-b/user-{i}" for i in range(12)),
    "c:r:i:o",
    "name with spaces",
    'quote"and\\slash',
    "Zoë",
    "Zoë Ünicode 名前",
    "x" * 256,
]


def shape(v: list[int]) -> dict[str, Any]:
    return {"credits": format_credits(v[0]), "requests": v[1], "input_tokens": v[2], "output_tokens": v[3]}


def ranked(totals: dict[str, list[int]]) -> list[dict[str, Any]]:
    order = sorted(totals.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [{"end_user": u, **shape(v)} for u, v in order]


async def test_end_user_rollups_equal_the_records_and_rank_top_n_and_prefixes(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    ledger = RedisLedger(redis_client)
    api = await api_for(http, redis_client, account)
    rng = random.Random(31)
    for _ in range(500):
        at = NOW - timedelta(days=rng.randrange(0, 10), minutes=rng.randrange(0, 600))  # some before the 7 days
        who = rng.choice(END_USERS) if rng.random() < 0.7 else ""  # most, not all, name an end user
        rec = record(account, at=at, inp=rng.randrange(0, 5000), out=rng.randrange(0, 3000),
                     credits=rng.randrange(0, 10**7), end_user=who)  # fmt: skip
        assert (await ledger.settle(rec)).applied
        if rng.random() < 0.1:  # a repeated settlement is not rolled up twice
            assert not (await ledger.settle(rec)).applied

    # Sum the raw records independently of the rollups, over the 7 UTC days the view shows.
    first = (NOW - timedelta(days=6)).strftime("%Y-%m-%d")
    per_user: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for _, f in await stream_entries(redis_client, account):
        day = datetime.fromtimestamp(int(f["ts_ms"]) / 1000, UTC).strftime("%Y-%m-%d")
        if f["end_user"] and day >= first:
            row = [int(f["credits"]), 1, int(f["input_tokens"]), int(f["output_tokens"])]
            for i, v in enumerate(row):
                per_user[f["end_user"]][i] += v
    assert len(per_user) == len(END_USERS)
    expected = ranked(per_user)

    summary = await api.ok(days="7")
    assert summary["by_end_user"] == expected[:10] and summary["end_users_more"] is True
    everyone = await api.ok(view="end_users", days="7", limit="100")
    assert everyone["data"] == expected and everyone["has_more"] is False
    top3 = await api.ok(view="end_users", days="7", limit="3")
    assert top3["data"] == expected[:3] and top3["has_more"] is True

    for prefix in ("team-a/", "team-b/user-1", "Zoë", "c:", 'quote"', "x" * 200, "name with "):
        found = await api.ok(view="end_users", days="7", prefix=prefix, limit="100")
        assert found["data"] == [row for row in expected if row["end_user"].startswith(prefix)], prefix
        assert found["data"] and found["prefix"] == prefix and found["has_more"] is False
    some = await api.ok(view="end_users", days="7", prefix="team-a/")  # the default limit: 10 of 12
    assert some["data"] == [row for row in expected if row["end_user"].startswith("team-a/")][:10]
    assert some["has_more"] is True
    for prefix in ("team-c", "Zoë Z", "y", "team-a/user-1x"):
        assert (await api.ok(view="end_users", days="7", prefix=prefix))["data"] == []

    # The wider views add the older days; the rollups expire with the day hash.
    wide = await api.ok(view="end_users", days="30", limit="100")
    assert sum(r["requests"] for r in wide["data"]) > sum(r["requests"] for r in expected)
    day = NOW.strftime("%Y-%m-%d")
    ttl = await redis_client.ttl(ks.day(account, day))
    assert ttl > 0
    for key in (ks.end_users(account, day), ks.end_user_counts(account, day)):
        assert abs(await redis_client.ttl(key) - ttl) <= 1
    assert not await redis_client.exists(ks.end_user_scratch(account))  # the query's union is gone


async def test_an_account_without_end_users_has_no_end_user_keys(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    ledger = RedisLedger(redis_client)
    for i in range(5):
        await ledger.settle(record(account, at=NOW - timedelta(days=i)))
    keys = [k async for k in redis_client.scan_iter(match=f"crt:{{a:{account}}}:eu*")]
    assert keys == []
    api = await api_for(http, redis_client, account)
    data = await api.ok(days="7")
    assert data["by_end_user"] == [] and data["end_users_more"] is False and data["totals"]["requests"] == 5
    assert (await api.ok(view="end_users", prefix="a"))["data"] == []
    assert [k async for k in redis_client.scan_iter(match=f"crt:{{a:{account}}}:eu*")] == []


async def test_bad_end_user_parameters_are_400s_naming_them(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    api = await api_for(http, redis_client, account)
    for params, param in (
        ({"prefix": "a\x00"}, "prefix"),
        ({"prefix": " a"}, "prefix"),
        ({"prefix": "x" * 257}, "prefix"),
        ({"prefix": "a\u202e"}, "prefix"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"days": "8"}, "days"),
    ):
        r = await api.get(view="end_users", **params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, params
