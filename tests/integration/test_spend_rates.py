"""Spend rates on real Redis, through the core's Meter with an injected clock: credits per UTC
minute and per UTC hour, for the account and for a key, counted as settled credits in the window
plus open holds plus the request's own hold (a runaway loop is stopped within one window, never
past the limit); the refusal names its limit (error.param, X-Critique-Limit) and when it lifts.
tests/integration/test_cluster.py runs two of them again on a 3-master Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Authenticator, Identity
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.core.limit_table import ACCOUNT_LIMITS, KEY_LIMITS
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.core.scopes import LIMITS_PATH
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.usage_query import UsageQuery
from critique_sidecar.web.app import WebContext, build_web_app

from .account_kit import BODY, CATALOG, HOLD_TTL_S, NOON, USD_PER_CREDIT, Env

USED = TokenCounts(10, 100)  # what every settled request below used


async def test_a_runaway_loop_is_stopped_within_the_minute_and_resumes_in_the_next(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    charge = env.meter.charge(await env.admit(), USED).credits  # one request's charge, to size the limit
    limit = 5 * charge + env.hold - 1  # five settled requests fit beside one hold; a sixth does not
    await env.configure(credits_per_minute=format_credits(limit))
    admitted, settled = 1, 0
    refusal: ApiError | None = None
    while refusal is None:  # the loop: one request after another, as fast as the account allows
        try:
            req = await env.admit()
        except ApiError as err:
            refusal = err
            break
        admitted += 1
        settled += await env.settle(req, USED)
        assert admitted < 100, "the spend rate never stopped the loop"
    assert (refusal.status, refusal.code) == (429, "credits_per_minute_reached")
    # What was spent in the window plus the open hold never passed the limit.
    spent = settled + env.hold  # the first admission is still open
    assert spent <= limit < spent + env.hold
    assert refusal.param == "account:credits_per_minute"
    assert refusal.headers["x-critique-limit"] == "account:credits_per_minute"
    assert refusal.headers["retry-after"] == "60"  # noon: the next minute
    assert "x-should-retry" not in refusal.headers  # lifts within a retry's wait
    assert format_credits(limit) in refusal.message

    env.clock.at = NOON + timedelta(seconds=59, milliseconds=999)
    assert (await env.refused()).code == "credits_per_minute_reached"
    env.clock.at = NOON + timedelta(minutes=1)  # a new window: only the open hold counts
    await env.admit()


async def test_open_holds_count_and_a_cancelled_hold_gives_its_share_back(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.configure(credits_per_hour=format_credits(2 * env.hold))
    first, second = await env.admit(), await env.admit()  # two holds in flight fill the hour exactly
    err = await env.refused()
    assert (err.code, err.param) == ("credits_per_hour_reached", "account:credits_per_hour")
    assert err.headers["retry-after"] == "3600" and err.headers["x-should-retry"] == "false"
    await env.meter.settle(first, None, "cancelled")  # released, charged nothing
    third = await env.admit()
    spent = await env.settle(second, USED) + await env.settle(third, USED)
    env.clock.at = NOON + timedelta(minutes=59)  # the same hour: what was spent in it still counts
    await env.configure(credits_per_hour=format_credits(spent + env.hold - 1))
    assert (await env.refused()).code == "credits_per_hour_reached"
    await env.configure(credits_per_hour=format_credits(spent + env.hold))
    await env.admit()
    env.clock.at = NOON + timedelta(hours=1, minutes=2)  # the next hour; the hold above has expired
    await env.configure(credits_per_hour=format_credits(env.hold))
    await env.admit()


async def test_zero_is_a_kill_switch(env: Env) -> None:
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.configure(credits_per_minute="0")
    assert (await env.refused()).code == "credits_per_minute_reached"
    await env.configure(credits_per_minute=None)
    await env.admit()


async def test_a_late_settlement_counts_in_the_newest_window(env: Env) -> None:
    """A settlement stamped before the window the account is in (a journaled replay, another
    sidecar's clock) counts in that newest window, never in one already gone."""
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.configure(credits_per_hour=1000)  # spend is kept while a spend rate is set
    old = await env.admit()
    env.clock.at = NOON + timedelta(minutes=1, seconds=5)
    await env.settle(await env.admit(), USED)  # the limiter's window is now 12:01
    env.clock.at = NOON + timedelta(seconds=30)  # the old request settles stamped 12:00:30
    late = await env.settle(old, USED)
    raw: bytes = await env.redis.hget(ks.limiter(env.account), "sp")  # type: ignore[assignment]
    minute, credits, _hour, hour_credits = (int(x) for x in raw.decode().split("|"))
    assert minute == int((NOON + timedelta(minutes=1)).timestamp()) // 60
    assert credits == 2 * late and hour_credits == 2 * late


@pytest.fixture
async def keyed(env: Env, redis_client: aioredis.Redis) -> AsyncIterator[tuple[Env, Env, RedisKeyStore]]:
    """Two keys of one account, each with its own Meter identity."""
    keys = RedisKeyStore(redis_client)
    _, one = await keys.create(env.account, ("write:inference",))
    _, two = await keys.create(env.account, ("write:inference",))
    ledger = RedisLedger(redis_client)
    pair = []
    for record in (one, two):
        meter = Meter(CATALOG, ledger, USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=env.clock)
        pair.append(
            Env(
                env.redis,
                env.account,
                env.clock,
                meter,
                env.settings,
                env.accounts,
                Identity(env.account, record.key_id, record.scopes),
            )
        )
    yield pair[0], pair[1], keys
    await ledger.aclose()


async def test_a_key_spend_rate_stops_that_key_only(keyed: tuple[Env, Env, RedisKeyStore]) -> None:
    one, two, keys = keyed
    await one.accounts.grant(one.account, 1000 * MICRO)
    in_flight = await one.admit()  # admitted before the limit: counted once the limit is set
    await keys.set_controls(one.account, one.identity.key_id, KeyControls(credits_per_minute=2 * one.hold))
    await one.admit()
    err = await one.refused()
    assert (err.code, err.param, err.headers["x-critique-limit"]) == (
        "key_credits_per_minute_reached",
        "key:credits_per_minute",
        "key:credits_per_minute",
    )
    await two.admit()  # the other key is not limited
    await one.settle(in_flight, USED)  # its charge stays in the minute: still no room for a hold
    assert (await one.refused()).code == "key_credits_per_minute_reached"
    one.clock.at = NOON + timedelta(seconds=30)
    assert (await one.refused()).code == "key_credits_per_minute_reached"
    one.clock.at = NOON + timedelta(minutes=1)  # the next minute: the settled charge is behind
    await one.admit()


async def test_the_limits_route_shows_each_limit_of_the_account_and_the_calling_key(
    env: Env, redis_client: aioredis.Redis
) -> None:
    """GET /api/settings/inference-api/limits: each limit's use and what is left, keyed by the
    names a refusal gives in X-Critique-Limit."""
    keys = RedisKeyStore(redis_client)
    secret, record = await keys.create(env.account, ("read:inference", "write:inference"))
    reader, _ = await keys.create(env.account, ("write:inference",))
    await keys.set_controls(
        env.account, record.key_id,
        KeyControls(credits_per_minute=5 * MICRO, daily_credit_cap=3 * MICRO, requests_per_minute=10, max_concurrent=4),
    )  # fmt: skip
    await env.accounts.grant(env.account, 100 * MICRO)
    await env.configure(credits_per_hour=50, daily_credit_cap=20, requests_per_minute=100)
    meter = Meter(CATALOG, RedisLedger(redis_client), USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=env.clock)
    me = Identity(env.account, record.key_id, record.scopes)
    admit = [await meter.admit(me, meter.parse(CHAT, BODY), False) for _ in range(3)]
    spent = 0
    for req in admit[:2]:
        spent += (await meter.settle(req, meter.charge(req, USED), "ok")).credits
    app = build_web_app(
        WebContext(
            Authenticator(keys, cache_ttl_s=0),
            CATALOG,
            clock=env.clock,
            settings=env.settings,
            dashboard=UsageQuery(redis_client),
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sidecar") as http:
        got = await http.get(LIMITS_PATH, headers={"authorization": f"Bearer {secret}"})
        denied = await http.get(LIMITS_PATH, headers={"authorization": f"Bearer {reader}"})
    assert got.status_code == 200, got.text
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
    body = got.json()
    assert (body["object"], body["account"], body["key_id"]) == ("inference_limits", env.account, record.key_id)
    account, key = body["account_limits"], body["key_limits"]
    assert set(account) == {row.name for row in ACCOUNT_LIMITS if not row.each} and set(key) == {
        row.name for row in KEY_LIMITS
    }
    hour = account["credits_per_hour"]
    assert (hour["spent"], hour["cap"], hour["remaining"]) == (
        format_credits(spent),
        "50.000000",
        format_credits(50 * MICRO - spent),
    )
    assert hour["resets_at"] == "2026-11-26T13:00:00Z" and not hour["reached"]
    assert account["daily_credit_cap"]["spent"] == format_credits(spent)
    assert account["credits_per_minute"]["cap"] is None  # not set: shown, with its use
    assert account["requests_per_minute"]["used"] == 3 and account["max_concurrent"]["in_flight"] == 1
    minute = key["credits_per_minute"]
    assert (minute["spent"], minute["cap"], minute["resets_at"]) == (
        format_credits(spent),
        "5.000000",
        "2026-11-26T12:01:00Z",
    )
    assert key["daily_credit_cap"]["spent"] == format_credits(spent) and key["daily_credit_cap"]["cap"] == "3.000000"
    assert (key["requests_per_minute"]["used"], key["requests_per_minute"]["limit"]) == (3, 10)
    assert (key["max_concurrent"]["in_flight"], key["max_concurrent"]["limit"]) == (1, 4)
    assert key["tokens_per_minute"]["limit"] is None and key["credits_per_hour"]["cap"] is None
    assert body["balance"]["held"] == format_credits(admit[2].hold)
    assert body["balance"]["balance"] == format_credits(100 * MICRO - spent)


async def test_accounts_and_keys_without_a_spend_rate_keep_no_spend(env: Env) -> None:
    """The spend windows cost nothing where no spend rate (or key credit limit) is set."""
    await env.accounts.grant(env.account, 1000 * MICRO)
    await env.settle(await env.admit(), USED)
    assert await env.redis.hkeys(ks.limiter(env.account)) == []
    await env.configure(credits_per_minute=5)
    charged = await env.settle(await env.admit(), USED)
    assert await env.redis.hkeys(ks.limiter(env.account)) == [b"sp"]
    raw: bytes = await env.redis.hget(ks.limiter(env.account), "sp")  # type: ignore[assignment]
    assert raw.split(b"|")[1] == str(charged).encode()
