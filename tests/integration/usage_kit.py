"""What the usage-data tests share: usage records as settlement writes them (now, or with
stream ids days in the past), the account's usage stream as Redis holds it, the dashboard API
seen with one key, polling, and the CLI in a subprocess. The `http` fixture (the web app on
real Redis) is in tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import redis.asyncio as aioredis

from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import record_fields
from critique_sidecar.store.usage_retention import DAY_MS

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
    endpoint: str = "chat.completions",
    end_user: str = "",
) -> UsageRecord:
    n = next(_seq)
    return UsageRecord(
        request_id=f"req_{account}_{n}", account=account, key_id=key_id, model=model,
        input_tokens=inp, output_tokens=out, credits=credits, usd=str(Decimal(credits) / 10**8),
        price_version=f"v1/{model}/private", opt_in=False, estimated=False, status="ok", latency_ms=7,
        ts_ms=int(at.timestamp() * 1000), day=at.strftime("%Y-%m-%d"), month=at.strftime("%Y-%m"),
        endpoint=endpoint, end_user=end_user,
    )  # fmt: skip


async def stream_entries(r: aioredis.Redis, account: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = await r.xrange(ks.usage_stream(account))
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


async def api_for(
    http: httpx.AsyncClient, r: aioredis.Redis, account: str, scopes: tuple[str, ...] = ("read:inference",)
) -> Api:
    key, _ = await RedisKeyStore(r).create(account, scopes, "dash")
    return Api(http, key)


async def add_old(r: aioredis.Redis | aioredis.RedisCluster, account: str, days_ago: float, n: int) -> list[str]:
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


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRITIQUE_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "critique_sidecar.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )
