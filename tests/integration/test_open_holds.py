"""Limits that change while requests are in flight, and a promotion's boundary instant, on real
Redis through the core's Meter: an account cap lowered below what open holds need, a key's credit
cap and concurrency limit set while the key has holds open (they are counted at once), and the
price at the exact instants a promotion starts and ends (a request is priced at its start)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from critique_sidecar.core.auth import Identity
from critique_sidecar.core.catalog import price_for
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.core.metering import MeteredRequest
from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore

from .account_kit import CATALOG, MAX_TOKENS, Env

SMALL = TokenCounts(10, MAX_TOKENS // 4)  # a charge well below the hold


async def day_credits(env: Env) -> int:
    return int(await env.redis.hget(ks.day(env.account, "2026-11-26"), "credits") or 0)


# -- an account cap lowered while holds are open --------------------------------------------


async def test_a_cap_lowered_below_open_holds_refuses_new_requests_and_honours_the_open_ones(env: Env) -> None:
    await env.accounts.grant(env.account, 100 * MICRO)
    await env.configure(daily_credit_cap=format_credits(10 * env.hold))
    open_ = [await env.admit() for _ in range(3)]
    await env.configure(daily_credit_cap=format_credits(2 * env.hold))  # below the three holds
    err = await env.refused()
    assert err.code == "daily_credit_cap_reached"
    charged = [await env.settle(req) for req in open_]  # admitted under the old cap: settled in full
    assert all(0 < c <= env.hold for c in charged)
    assert await day_credits(env) == sum(charged) and (await env.ledger())["held"] == 0
    while await day_credits(env) + env.hold <= 2 * env.hold:  # what fits the new cap is admitted again
        await env.settle(await env.admit())
    assert (await env.refused()).code == "daily_credit_cap_reached"
    assert await day_credits(env) <= max(2 * env.hold, sum(charged))


# -- a key's limits set while it has holds open ------------------------------------------


async def key_env(env: Env) -> tuple[RedisKeyStore, Identity]:
    store = RedisKeyStore(env.redis)
    _, record = await store.create(env.account, ("write:inference",))
    await env.accounts.grant(env.account, 100 * MICRO)
    return store, Identity(env.account, record.key_id, record.scopes)


async def admit_as(env: Env, who: Identity) -> MeteredRequest:
    return await env.meter.admit(who, env.meter.parse(CHAT, _body()), False)


def _body() -> bytes:
    return json.dumps(
        {"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
    ).encode()


async def settle(env: Env, req: MeteredRequest, usage: TokenCounts = SMALL) -> int:
    return (await env.meter.settle(req, env.meter.charge(req, usage), "ok")).credits


async def test_a_key_credit_cap_set_with_holds_open_counts_them(env: Env) -> None:
    store, key = await key_env(env)
    first, second = await admit_as(env, key), await admit_as(env, key)  # no cap yet: not counted
    cap = 5 * env.hold // 2  # room for the two open holds and half of a third
    await store.set_controls(env.account, key.key_id, KeyControls(daily_credit_cap=cap))
    assert int(await env.redis.hget(ks.limiter(env.account), f"h:{key.key_id}") or 0) == 2 * env.hold
    with pytest.raises(ApiError) as err:
        await admit_as(env, key)
    assert err.value.code == "key_daily_credit_cap_reached"  # without counting them it would fit

    spent = await settle(env, first) + await settle(env, second)
    assert await env.redis.hget(ks.limiter(env.account), f"h:{key.key_id}") is None  # undone exactly
    third = await admit_as(env, key)  # spent (small charges) + one hold fits now
    assert spent + env.hold <= cap
    await settle(env, third, TokenCounts(10, MAX_TOKENS))
    assert int(await env.redis.hget(ks.day(env.account, "2026-11-26"), f"k:{key.key_id}:credits") or 0) <= cap


async def test_a_key_concurrency_limit_set_with_requests_in_flight_counts_them(env: Env) -> None:
    store, key = await key_env(env)
    in_flight = [await admit_as(env, key) for _ in range(2)]
    await store.set_controls(env.account, key.key_id, KeyControls(max_concurrent=2))
    with pytest.raises(ApiError) as err:
        await admit_as(env, key)
    assert err.value.code == "rate_limit_exceeded" and "max_concurrent" in err.value.message
    await settle(env, in_flight[0])
    third = await admit_as(env, key)
    for req in (in_flight[1], third):
        await settle(env, req)
    assert await env.redis.hget(ks.limiter(env.account), f"n:{key.key_id}") is None


async def test_setting_a_key_limit_twice_counts_open_holds_once(env: Env) -> None:
    store, key = await key_env(env)
    req = await admit_as(env, key)
    for cap in (10 * env.hold, 20 * env.hold):
        await store.set_controls(env.account, key.key_id, KeyControls(daily_credit_cap=cap, max_concurrent=5))
    lim: Any = await env.redis.hgetall(ks.limiter(env.account))
    assert (int(lim[f"h:{key.key_id}".encode()]), int(lim[f"n:{key.key_id}".encode()])) == (env.hold, 1)
    await settle(env, req)
    left = {k for k in await env.redis.hkeys(ks.limiter(env.account)) if key.key_id.encode() in k}
    assert left == {f"sp:{key.key_id}".encode()}  # only the key's spend in this minute and hour


# -- a promotion's boundary instants -------------------------------------------------------

PROMOTED = next(m for m in CATALOG.models if m.promotions)  # the catalog's promotion, whatever its dates
PROMO_MODEL = PROMOTED.id
PROMO_START, PROMO_END = PROMOTED.promotions[0].valid_from, PROMOTED.promotions[0].valid_to  # end exclusive
USAGE = TokenCounts(10, 500)  # within the hold: the body bounds the input, max_tokens the output


def promo_body() -> bytes:
    return json.dumps(
        {"model": PROMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}
    ).encode()


@pytest.mark.parametrize(
    ("started", "promo"),
    [
        (PROMO_START - timedelta(microseconds=1), False),
        (PROMO_START, True),
        (PROMO_END - timedelta(microseconds=1), True),
        (PROMO_END, False),
    ],
)
async def test_a_request_is_priced_at_its_start_instant_across_a_promotion_boundary(
    env: Env, started: datetime, promo: bool
) -> None:
    await env.accounts.grant(env.account, 100 * MICRO)
    env.clock.at = started
    req = await env.meter.admit(env.identity, env.meter.parse(CHAT, promo_body()), False)
    env.clock.at = started + timedelta(hours=1)  # settled after the boundary: still the start's price
    charged = await settle(env, req, USAGE)
    model = CATALOG.model(PROMO_MODEL)
    assert model is not None
    at_start = price_for(CATALOG, model, started, False)
    assert ("promo:" in at_start.version) == promo
    assert charged == env.meter.credits_for(USAGE, at_start)
    rows: Any = await env.redis.xrange(ks.usage_stream(env.account))
    [(_, record)] = rows
    assert record[b"price_version"].decode() == at_start.version
    assert record[b"credits"] == str(charged).encode()
