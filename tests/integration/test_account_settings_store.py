"""Account settings on real Redis: the settings store (defaults, partial patches, rejected and
concurrent patches) and the settings routes, which check the key's scopes themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.scopes import SETTINGS_PATH
from critique_sidecar.json_http import MAX_BODY_BYTES
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.settings_store import RedisSettingsStore
from critique_sidecar.web.app import WebContext, build_web_app

from .account_kit import CATALOG, Env

# -- the settings store --------------------------------------------------------------------


async def test_defaults_for_an_unconfigured_account(env: Env) -> None:
    got = await env.settings.get(env.account)
    assert got.to_json() == {
        "enabled": True, "monthly_credit_cap": None, "daily_credit_cap": None, "daily_request_cap": None,
        "reserve_credits_for_review": "0.000000", "block_when_cap_reached": True, "deepseek_training_opt_in": False,
    "requests_per_minute": None, "tokens_per_minute": None, "max_concurrent": None,
    "credits_per_minute": None, "credits_per_hour": None,
    "end_user_daily_credit_cap": None, "end_user_monthly_credit_cap": None, "end_user_requests_per_minute": None,
    "notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None,
    }  # fmt: skip
    assert await env.redis.exists(ks.settings(env.account)) == 0  # reading writes nothing


async def test_patch_is_partial_stores_micro_credits_and_null_clears_a_cap(env: Env) -> None:
    first = await env.configure(daily_credit_cap=Decimal("12.5"), monthly_credit_cap="100", daily_request_cap=7)
    assert (first.daily_credit_cap, first.monthly_credit_cap, first.daily_request_cap) == (
        Decimal("12.5"),
        Decimal(100),
        7,
    )
    raw = await env.redis.hgetall(ks.settings(env.account))
    assert raw == {b"daily_credit_cap": b"12500000", b"monthly_credit_cap": b"100000000", b"daily_request_cap": b"7"}

    second = await env.configure(daily_credit_cap=None, reserve_credits_for_review=Decimal("0.000001"), enabled=False)
    assert second.daily_credit_cap is None  # cleared
    assert second.monthly_credit_cap == Decimal(100) and second.daily_request_cap == 7  # untouched
    assert second.reserve_credits_for_review == Decimal("0.000001") and second.enabled is False
    assert await env.settings.get(env.account) == second
    raw = await env.redis.hgetall(ks.settings(env.account))
    assert b"daily_credit_cap" not in raw and raw[b"reserve_floor"] == b"1" and raw[b"enabled"] == b"0"


async def test_a_rejected_patch_changes_nothing(env: Env) -> None:
    before = await env.configure(daily_credit_cap=5, enabled=True)
    for bad in (
        {"daily_credit_cap": 1, "enabled": "false"},  # one bad field spoils the whole patch
        {"daily_credit_cap": -1},
        {"monthly_credit_cap": "lots"},
        {"daily_request_cap": "3"},
        {"daily_credit_cap": 2, "surprise": True},
    ):
        with pytest.raises(ApiError) as err:
            await env.configure(**bad)
        assert err.value.code == "invalid_request" and err.value.param in bad
    assert await env.settings.get(env.account) == before


async def test_concurrent_patches_never_mix_fields(env: Env) -> None:
    """Each PATCH is one atomic script: the final state is exactly one patch's values."""
    await asyncio.gather(
        *(env.configure(daily_request_cap=i, daily_credit_cap=i, monthly_credit_cap=i) for i in range(1, 60))
    )
    final = await env.settings.get(env.account)
    assert final.daily_request_cap == final.daily_credit_cap == final.monthly_credit_cap


# -- the settings routes re-check the key themselves (no Envoy in front) -------------------


@pytest.fixture
async def web(redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    keys = RedisKeyStore(redis_client)
    ctx = WebContext(Authenticator(keys, cache_ttl_s=0), CATALOG, settings=RedisSettingsStore(redis_client))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_web_app(ctx)), base_url="http://sidecar"
    ) as http:
        yield http


async def test_settings_routes_enforce_scopes_without_envoy(
    web: httpx.AsyncClient, redis_client: aioredis.Redis, account: str
) -> None:
    keys = RedisKeyStore(redis_client)
    agent, _ = await keys.create(account, ("read:inference", "write:inference"))
    admin, _ = await keys.create(account, ("admin:inference",))
    builder, _ = await keys.create(account, ("write:builder",))

    r = await web.patch(SETTINGS_PATH, headers={"authorization": f"Bearer {agent}"}, json={"daily_credit_cap": 1000})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = await web.get(SETTINGS_PATH, headers={"authorization": f"Bearer {builder}"})
    assert r.status_code == 403
    r = await web.get(SETTINGS_PATH)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert await redis_client.exists(ks.settings(account)) == 0

    r = await web.patch(
        SETTINGS_PATH, headers={"authorization": f"Bearer {admin}"}, content=b'{"daily_credit_cap": 0.1}'
    )
    assert r.status_code == 200 and r.json()["daily_credit_cap"] == "0.100000"  # 0.1 parsed exactly, never as a float
    r = await web.get(SETTINGS_PATH, headers={"authorization": f"Bearer {agent}"})
    assert r.status_code == 200 and r.json()["daily_credit_cap"] == "0.100000"


async def test_settings_patch_body_size_is_limited(
    web: httpx.AsyncClient, redis_client: aioredis.Redis, account: str
) -> None:
    admin, _ = await RedisKeyStore(redis_client).create(account, ("admin:inference",))
    body = b'{"enabled": true, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await web.patch(SETTINGS_PATH, headers={"authorization": f"Bearer {admin}"}, content=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = await web.post(SETTINGS_PATH, headers={"authorization": f"Bearer {admin}"}, json={})
    assert r.status_code == 405
