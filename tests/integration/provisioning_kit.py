"""The provisioning API app on a real Redis, called in process through httpx (the same app the
admin listener serves), plus an operator token made by the same store the CLI uses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from critique_sidecar.admin import provisioning
from critique_sidecar.config import Config
from critique_sidecar.provisioning.api import build_admin_app
from critique_sidecar.store.audit import Actor, Change
from critique_sidecar.store.operator_tokens import RedisOperatorTokens


def cli_change() -> Change:
    return Change(Actor("cli", "tester"), "cli_test", int(time.time() * 1000))


@dataclass
class Admin:
    http: httpx.AsyncClient
    redis: Any
    tokens: RedisOperatorTokens
    token: str
    token_id: str

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.token}", **extra}

    async def new_token(self, scopes: tuple[str, ...], name: str = "scoped") -> str:
        token, _ = await self.tokens.create(name, scopes, cli_change())
        return token

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**self.headers(token), **kw.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kw)


@asynccontextmanager
async def admin_api(redis_url: str, client: Any = None, **config: Any) -> AsyncIterator[Admin]:
    """`client`: a Redis client to use instead of one for `redis_url` (e.g. a Cluster client)."""
    redis = client if client is not None else aioredis.Redis.from_url(redis_url)
    tokens = RedisOperatorTokens(redis)
    token, record = await tokens.create("ops", ("keys", "credits", "settings", "usage", "audit"), cli_change())
    app = build_admin_app(provisioning(Config(**config), redis), tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http:
        yield Admin(http, redis, tokens, token, record.token_id)
    await redis.aclose()
