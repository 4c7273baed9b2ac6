"""Integration fixtures beyond tests/conftest.py's Redis: `env` for the account-control tests
(test_account_*.py; test_journal.py has an `env` of its own) and `http` for the dashboard
API tests (test_dashboard_*.py). A module that overrides `redis_client` (test_cluster.py) gets
them on its own Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.auth import Identity
from critique_sidecar.core.metering import Meter
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

from .account_kit import CATALOG, HOLD_TTL_S, NOON, USD_PER_CREDIT, Clock, Env


@pytest.fixture
async def env(redis_client: aioredis.Redis, account: str) -> Env:
    clock = Clock(NOON)
    meter = Meter(CATALOG, RedisLedger(redis_client), USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=clock)
    return Env(
        redis_client, account, clock, meter, RedisSettingsStore(redis_client), RedisAccounts(redis_client),
        Identity(account, "key_test", frozenset({"write:inference"})),
    )  # fmt: skip
