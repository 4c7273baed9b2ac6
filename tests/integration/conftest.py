"""Integration fixtures beyond tests/conftest.py's Redis: `env` for the account-control tests
(test_account_*.py; test_journal.py has an `env` of its own) and `http` for the dashboard
API tests (test_dashboard_*.py). A module that overrides `redis_client` (test_cluster.py) gets
them on its own Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Authenticator, Identity
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.metering import Meter
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore
from critique_sidecar.store.usage_query import UsageQuery
from critique_sidecar.web.app import WebContext, build_web_app

from .account_kit import CATALOG, HOLD_TTL_S, NOON, USD_PER_CREDIT, Clock, Env
from .usage_kit import NOW


@pytest.fixture
async def env(redis_client: aioredis.Redis, account: str) -> Env:
    clock = Clock(NOON)
    meter = Meter(CATALOG, RedisLedger(redis_client), USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=clock)
    return Env(
        redis_client, account, clock, meter, RedisSettingsStore(redis_client), RedisAccounts(redis_client),
        Identity(account, "key_test", frozenset({"write:inference"})),
    )  # fmt: skip


@pytest.fixture
async def http(redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    ctx = WebContext(
        Authenticator(RedisKeyStore(redis_client), cache_ttl_s=0), load_catalog(), clock=lambda: NOW,
        settings=RedisSettingsStore(redis_client), dashboard=UsageQuery(redis_client),
    )  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_web_app(ctx)), base_url="http://sidecar") as c:
        yield c
