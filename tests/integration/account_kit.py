"""What the account-control tests share: the request every scenario sends, an injected clock,
and `Env`, the core's Meter on real Redis with the account's settings and ledger at hand.
The `env` fixture (tests/integration/conftest.py) builds one per test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.account_settings import AccountSettings, SettingsPatch
from critique_sidecar.core.auth import Identity
from critique_sidecar.core.catalog import load_catalog, price_for
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.metering import Meter, MeteredRequest
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.settings_store import RedisSettingsStore

CATALOG = load_catalog()
USD_PER_CREDIT = Decimal("0.01")
HOLD_TTL_S = 60
MAX_TOKENS = 100
BODY = json.dumps(
    {
        "model": "deepseek/deepseek-v4-flash",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": MAX_TOKENS,
    }
).encode()


class Clock:
    """The injected clock: a fixed instant the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Env:
    redis: aioredis.Redis
    account: str
    clock: Clock
    meter: Meter
    settings: RedisSettingsStore
    accounts: RedisAccounts
    identity: Identity

    @property
    def hold(self) -> int:
        """The hold every BODY request places: its maximum cost at list price."""
        chat = self.meter.parse(CHAT, BODY)
        price = price_for(CATALOG, chat.model, self.clock(), False)
        return self.meter.credits_for(TokenCounts(chat.input_bound, chat.output_bound), price)

    async def configure(self, **fields: Any) -> AccountSettings:
        return await self.settings.patch(self.account, SettingsPatch.parse(fields))

    async def admit(self, opt_in: bool = False) -> MeteredRequest:
        return await self.meter.admit(self.identity, self.meter.parse(CHAT, BODY), opt_in)

    async def refused(self) -> ApiError:
        with pytest.raises(ApiError) as err:
            await self.admit()
        return err.value

    async def settle(self, req: MeteredRequest, usage: TokenCounts = TokenCounts(10, MAX_TOKENS)) -> int:
        charge = self.meter.charge(req, usage)
        result = await self.meter.settle(req, charge, "ok")
        assert result.applied
        return result.credits

    async def ledger(self) -> dict[str, int]:
        balance, held = await self.redis.hmget(ks.account(self.account), "balance", "held")
        return {
            "balance": int(balance or 0),
            "held": int(held or 0),
            "holds": await self.redis.hlen(ks.holds(self.account)),
        }

    async def day(self, day: str) -> dict[str, int]:
        data: dict[bytes, bytes] = await self.redis.hgetall(ks.day(self.account, day))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in data.items() if b":" not in k}


NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
