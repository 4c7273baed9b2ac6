"""The dashboard API's activity view on real Redis (Starlette app in process): pagination that
returns each record exactly once while new ones arrive, refused parameters, and which keys and
accounts see what."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis

from critique_sidecar.core.money import format_credits
from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.core.usage_schema import SCHEMA
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.web.dashboard import encode_cursor

from .usage_kit import api_for, poll, record, stream_entries


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
