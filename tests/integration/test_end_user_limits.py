"""Per-end-user limits on real Redis, through the core's Meter with an injected clock: the
account's defaults (daily and monthly credit caps, requests per minute) and an end user's own
values, counted per end user with its open holds, exact under a 200-way burst of one end user
never seen before; a request naming no end user is under none of them. Also the settings route
and the CLI that set an end user's own limits."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.metering import Meter, MeteredRequest
from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.core.scopes import END_USERS_PATH
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.end_user_limits import RedisEndUserLimits
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.web.app import WebContext, build_web_app

from .account_kit import CATALOG, HOLD_TTL_S, MAX_TOKENS, NOON, USD_PER_CREDIT, Env

USED = TokenCounts(10, MAX_TOKENS)


def body(user: str | None) -> bytes:
    data = {"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "hello"}]}
    data["max_tokens"] = MAX_TOKENS  # type: ignore[assignment]
    if user is not None:
        data["user"] = user
    return json.dumps(data).encode()


async def admit(env: Env, user: str | None) -> MeteredRequest:
    return await env.meter.admit(env.identity, env.meter.parse(CHAT, body(user)), False)


async def refused(env: Env, user: str | None) -> ApiError:
    with pytest.raises(ApiError) as err:
        await admit(env, user)
    return err.value


def hold_of(env: Env, user: str) -> int:
    parsed = env.meter.parse(CHAT, body(user))
    from critique_sidecar.core.catalog import price_for

    price = price_for(CATALOG, parsed.model, env.clock(), False)
    return env.meter.credits_for(TokenCounts(parsed.input_bound, parsed.output_bound), price)


async def test_a_burst_of_one_new_end_user_admits_exactly_what_its_daily_cap_holds(
    env: Env, redis_client: aioredis.Redis
) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    hold = hold_of(env, "alice")
    await env.configure(end_user_daily_credit_cap=format_credits(5 * hold))
    # The production path: the scripts over one pipelined connection, 200 admissions at once.
    ledger = RedisLedger(redis_client, autopipeline=not hasattr(redis_client, "get_primaries"))
    meter = Meter(CATALOG, ledger, USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=env.clock)

    async def one() -> str:
        try:
            await meter.admit(env.identity, meter.parse(CHAT, body("alice")), False)
            return "ok"
        except ApiError as e:
            return e.code

    results = Counter(await asyncio.gather(*(one() for _ in range(200))))
    await ledger.aclose()
    assert results == {"ok": 5, "end_user_daily_credit_cap_reached": 195}
    err = await refused(env, "alice")
    assert (err.status, err.param, err.headers["x-critique-limit"]) == (
        429,
        "end_user:daily_credit_cap",
        "end_user:daily_credit_cap",
    )
    assert "this end user" in err.message and err.headers["x-should-retry"] == "false"
    await admit(env, "bob")  # another end user has its own day
    await admit(env, None)  # and a request naming none is under no end-user limit
    limiter = await env.redis.hgetall(ks.limiter(env.account))
    assert int(limiter[b"hu:alice"]) == 5 * hold  # alice's open holds, counted for her caps


async def test_settled_credits_count_and_settlement_gives_back_the_rest(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    hold = hold_of(env, "carol")
    await env.configure(end_user_daily_credit_cap=format_credits(2 * hold))
    first = await admit(env, "carol")
    second = await admit(env, "carol")
    assert (await refused(env, "carol")).code == "end_user_daily_credit_cap_reached"
    charged = await env.settle(first, USED)  # below its hold: the difference is free again
    assert charged < hold
    third_fits = charged + hold + hold <= 2 * hold
    assert not third_fits  # the settled charge stays in the day
    assert (await refused(env, "carol")).code == "end_user_daily_credit_cap_reached"
    await env.meter.settle(second, None, "cancelled")  # a cancelled hold counts nothing
    await admit(env, "carol")
    limiter = await env.redis.hgetall(ks.limiter(env.account))
    assert int(limiter[b"hu:carol"]) == hold


async def test_an_end_users_own_values_override_the_defaults(env: Env, redis_client: aioredis.Redis) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    hold = hold_of(env, "vip")
    limits = RedisEndUserLimits(redis_client)
    await env.configure(end_user_daily_credit_cap=format_credits(hold_of(env, "someone")))
    await limits.change(env.account, "vip", {"end_user_daily_credit_cap": str(3 * hold)}, [])
    await limits.change(env.account, "blocked", {"end_user_monthly_credit_cap": "0"}, [])
    for _ in range(3):
        await admit(env, "vip")
    assert (await refused(env, "vip")).code == "end_user_daily_credit_cap_reached"
    await admit(env, "someone")
    assert (await refused(env, "someone")).code == "end_user_daily_credit_cap_reached"
    err = await refused(env, "blocked")
    assert (err.code, err.param) == ("end_user_monthly_credit_cap_reached", "end_user:monthly_credit_cap")
    await env.configure(end_user_daily_credit_cap=None)  # no default: only the own values remain
    await admit(env, "someone")
    assert (await refused(env, "blocked")).code == "end_user_monthly_credit_cap_reached"


async def test_the_monthly_cap_spans_the_days_of_the_month(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.configure(end_user_monthly_credit_cap=format_credits(3 * hold_of(env, "dan")))
    for day in range(3):
        env.clock.at = NOON + timedelta(days=day)
        await env.settle(await admit(env, "dan"), TokenCounts(10**6, 10**6))  # charged its whole hold
    env.clock.at = NOON + timedelta(days=3)
    assert (await refused(env, "dan")).code == "end_user_monthly_credit_cap_reached"
    env.clock.at = NOON + timedelta(days=6)  # 2026-12-02: a new month
    await admit(env, "dan")


async def test_requests_per_minute_per_end_user_admit_exactly_the_limit(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.configure(end_user_requests_per_minute=7)

    async def one(user: str) -> str:
        try:
            await admit(env, user)
            return "ok"
        except ApiError as e:
            return e.param or e.code

    results = Counter(await asyncio.gather(*(one("eve") for _ in range(50))))
    assert results == {"ok": 7, "end_user:requests_per_minute": 43}
    err = await refused(env, "eve")
    assert err.code == "rate_limit_exceeded" and "this end user allows 7 requests per minute" in err.message
    assert err.headers["x-critique-limit"] == "end_user:requests_per_minute"
    await admit(env, "frank")
    env.clock.at = NOON + timedelta(minutes=1, seconds=1)
    await admit(env, "eve")


async def test_the_settings_route_sets_and_shows_an_end_users_limits(env: Env, redis_client: aioredis.Redis) -> None:
    keys = RedisKeyStore(redis_client)
    admin, _ = await keys.create(env.account, ("read:inference", "admin:inference"))
    reader, _ = await keys.create(env.account, ("read:inference",))
    await env.configure(end_user_requests_per_minute=60)
    app = build_web_app(
        WebContext(
            Authenticator(keys, cache_ttl_s=0),
            CATALOG,
            clock=env.clock,
            settings=env.settings,
            end_user_limits=RedisEndUserLimits(redis_client),
        )
    )
    url = END_USERS_PATH + "?end_user=team%3Aa%C3%AFda"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sidecar") as http:
        put = await http.put(url, json={"daily_credit_cap": "2.5"}, headers={"authorization": f"Bearer {admin}"})
        denied = await http.put(url, json={"daily_credit_cap": 1}, headers={"authorization": f"Bearer {reader}"})
        shown = await http.get(url, headers={"authorization": f"Bearer {reader}"})
        bad = await http.put(url, json={"daily_credit_cap": -1}, headers={"authorization": f"Bearer {admin}"})
        unknown = await http.put(url, json={"weekly": 1}, headers={"authorization": f"Bearer {admin}"})
        nobody = await http.get(END_USERS_PATH + "?end_user=%01", headers={"authorization": f"Bearer {admin}"})
        cleared = await http.delete(url, headers={"authorization": f"Bearer {admin}"})
    assert put.status_code == 200, put.text
    assert put.json()["end_user"] == "team:aïda"
    assert put.json()["limits"] == {
        "daily_credit_cap": "2.500000",
        "monthly_credit_cap": None,
        "requests_per_minute": None,
    }
    assert put.json()["effective"] == {
        "daily_credit_cap": "2.500000",
        "monthly_credit_cap": None,
        "requests_per_minute": 60,
    }
    assert denied.status_code == 403 and shown.json() == put.json()
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "daily_credit_cap"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "weekly"
    assert nobody.status_code == 400 and nobody.json()["error"]["param"] == "end_user"
    assert cleared.json()["limits"]["daily_credit_cap"] is None
    assert await redis_client.exists(ks.end_user_limits(env.account, "team:aïda")) == 0
