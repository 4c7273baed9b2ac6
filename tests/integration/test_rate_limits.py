"""Per-key controls and per-minute rate limits on real Redis, through the core's Meter with an
injected clock: expiry, model allowlist, the key's daily cap, requests/tokens per minute and
concurrency, per account and per key, exact under 200 concurrent admissions; what settlement and
hold expiry give back; the x-ratelimit-* numbers. tests/integration/test_cluster.py runs this
module again on a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.auth import Identity
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.core.metering import Meter, MeteredRequest
from critique_sidecar.core.money import MICRO
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

from .account_kit import Clock

CATALOG = load_catalog()
MODEL = "deepseek/deepseek-v4-flash"
OTHER_MODEL = next(m.id for m in CATALOG.models if m.id != MODEL)
NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BURST = 200


def body(max_tokens: int = 100, model: str = MODEL) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    ).encode()


@dataclass
class Limits:
    redis: Any
    account: str
    clock: Clock
    meter: Meter
    keys: RedisKeyStore
    identity: Identity

    def tokens(self, max_tokens: int = 100) -> int:
        chat = self.meter.parse(CHAT, body(max_tokens))
        return chat.input_bound + chat.output_bound

    async def admit(self, max_tokens: int = 100, model: str = MODEL) -> MeteredRequest:
        return await self.meter.admit(self.identity, self.meter.parse(CHAT, body(max_tokens, model)), False)

    async def refused(self, max_tokens: int = 100, model: str = MODEL) -> ApiError:
        with pytest.raises(ApiError) as err:
            await self.admit(max_tokens, model)
        return err.value

    async def burst(self, n: int = BURST, max_tokens: int = 100) -> tuple[list[MeteredRequest], Counter[str]]:
        async def one() -> MeteredRequest | str:
            try:
                return await self.admit(max_tokens)
            except ApiError as e:
                return e.code

        results = await asyncio.gather(*(one() for _ in range(n)))
        return [r for r in results if isinstance(r, MeteredRequest)], Counter(r for r in results if isinstance(r, str))

    async def settle(self, req: MeteredRequest, usage: TokenCounts = TokenCounts(10, 20)) -> None:
        await self.meter.settle(req, self.meter.charge(req, usage), "ok")

    async def control(self, **fields: Any) -> None:
        await self.keys.set_controls(self.account, self.identity.key_id, KeyControls(**fields))

    async def configure(self, **fields: Any) -> None:
        await RedisSettingsStore(self.redis).patch(self.account, SettingsPatch.parse(fields))

    async def counters(self) -> dict[str, int]:
        data = await self.redis.hgetall(ks.limiter(self.account))
        return {k.decode(): int(v) for k, v in data.items() if not k.endswith(b":at") and not k.startswith(b"sp")}


@pytest.fixture
async def lim(redis_client: aioredis.Redis, account: str) -> AsyncIterator[Limits]:
    clock = Clock(NOON)
    # The production path: scripts over one pipelined connection (the Cluster client has no batcher).
    ledger = RedisLedger(redis_client, autopipeline=not hasattr(redis_client, "get_primaries"))
    meter = Meter(CATALOG, ledger, Decimal("0.01"), hold_ttl_s=60, clock=clock)
    keys = RedisKeyStore(redis_client)
    _, record = await keys.create(account, ("write:inference",))
    await RedisAccounts(redis_client).grant(account, 1000 * MICRO)
    yield Limits(redis_client, account, clock, meter, keys, Identity(account, record.key_id, record.scopes))
    await ledger.aclose()


# -- per-key controls ----------------------------------------------------------------------------


async def test_controls_round_trip_and_belong_to_the_account(lim: Limits) -> None:
    assert (await lim.keys.get_controls(lim.account, lim.identity.key_id)).empty
    controls = KeyControls(expires_at_ms=1_900_000_000_000, models=(MODEL,), daily_credit_cap=5 * MICRO,
                           requests_per_minute=7, tokens_per_minute=9000, max_concurrent=3)  # fmt: skip
    await lim.keys.set_controls(lim.account, lim.identity.key_id, controls)
    assert await lim.keys.get_controls(lim.account, lim.identity.key_id) == controls
    assert (await lim.keys.by_id(lim.identity.key_id)).expires_at_ms == 1_900_000_000_000  # type: ignore[union-attr]
    slots = {await lim.redis.cluster_keyslot(k) if hasattr(lim.redis, "get_primaries") else 0
             for k in (ks.key_controls(lim.account, "k"), ks.limiter(lim.account), ks.minute_window(lim.account, "k"))}  # fmt: skip
    assert len(slots) == 1
    await lim.keys.set_controls(lim.account, lim.identity.key_id, KeyControls())
    assert (await lim.keys.get_controls(lim.account, lim.identity.key_id)).empty
    with pytest.raises(ValueError, match="no key"):
        await lim.keys.get_controls("someone-else", lim.identity.key_id)


async def test_expired_key_is_401_naming_the_expiry(lim: Limits) -> None:
    expiry = NOON + timedelta(minutes=5)
    await lim.control(expires_at_ms=int(expiry.timestamp() * 1000))
    await lim.admit()
    lim.clock.at = expiry
    err = await lim.refused()
    assert (err.status, err.code) == (401, "invalid_api_key")
    assert "expired at 2026-11-26T12:05:00Z" in err.message


async def test_model_allowlist_is_403_naming_the_model(lim: Limits) -> None:
    await lim.control(models=(MODEL,))
    await lim.admit()
    err = await lim.refused(model=OTHER_MODEL)
    assert (err.status, err.code, err.param) == (403, "model_not_allowed", "model")
    assert OTHER_MODEL in err.message and err.headers["x-should-retry"] == "false"


async def test_key_daily_cap_admits_exactly_what_fits_under_concurrency(lim: Limits) -> None:
    still_open = await lim.admit()
    hold = still_open.hold
    await lim.meter.settle((await lim.admit()), None, "cancelled")  # released: counts nothing
    first = await lim.redis.hget(ks.limiter(lim.account), f"h:{lim.identity.key_id}")
    assert first is None  # no cap yet: nothing tracked
    await lim.control(daily_credit_cap=5 * hold)  # the first hold is still open: it is counted now
    admitted, refused = await lim.burst()
    assert len(admitted) == 4 and refused == {"key_daily_credit_cap_reached": BURST - 4}
    err = await lim.refused()
    assert err.status == 429 and err.headers["x-should-retry"] == "false"
    assert err.headers["retry-after"] == str(12 * 3600)
    for req in [still_open, *admitted]:  # settling charges less than the holds: the key's held credits go back
        await lim.settle(req)
    assert f"h:{lim.identity.key_id}" not in await lim.counters()
    lim.clock.at += timedelta(days=1)
    await lim.admit()  # a new UTC day


# -- requests per minute -------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["key", "account"])
async def test_requests_per_minute_admit_exactly_the_limit_of_a_burst(lim: Limits, scope: str) -> None:
    if scope == "key":
        await lim.control(requests_per_minute=50)
    else:
        await lim.configure(requests_per_minute=50)
    admitted, refused = await lim.burst()
    assert len(admitted) == 50 and refused == {"rate_limit_exceeded": BURST - 50}
    err = await lim.refused()
    assert err.headers["retry-after"] == "60"
    assert err.headers["x-ratelimit-limit-requests"] == "50"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "allows 50 requests per minute" in err.message and "x-should-retry" not in err.headers
    lim.clock.at += timedelta(seconds=59, milliseconds=999)
    assert (await lim.refused()).headers["retry-after"] == "1"
    lim.clock.at += timedelta(milliseconds=1)  # the whole burst leaves the window at once
    admitted, refused = await lim.burst()
    assert len(admitted) == 50


async def test_requests_window_slides(lim: Limits) -> None:
    await lim.control(requests_per_minute=3)
    first = await lim.admit()
    assert first.rate is not None and first.rate.requests is not None
    assert (first.rate.requests.limit, first.rate.requests.remaining, first.rate.requests.reset_ms) == (3, 2, 60000)
    lim.clock.at += timedelta(seconds=20)
    await lim.admit()
    lim.clock.at += timedelta(seconds=20)
    third = await lim.admit()
    assert third.rate.requests.remaining == 0 and third.rate.requests.reset_ms == 20000  # type: ignore[union-attr]
    err = await lim.refused()
    assert err.headers["retry-after"] == "20" and err.headers["x-ratelimit-reset-requests"] == "20s"
    lim.clock.at += timedelta(seconds=20)  # the first one left
    await lim.admit()
    await lim.refused()


async def test_the_tighter_of_account_and_key_is_shown(lim: Limits) -> None:
    await lim.configure(requests_per_minute=10)
    await lim.control(requests_per_minute=100, tokens_per_minute=10 * lim.tokens())
    req = await lim.admit()
    assert req.rate is not None and req.rate.requests is not None and req.rate.tokens is not None
    assert (req.rate.requests.limit, req.rate.requests.remaining) == (10, 9)
    assert (req.rate.tokens.limit, req.rate.tokens.remaining) == (10 * lim.tokens(), 9 * lim.tokens())


# -- tokens per minute ---------------------------------------------------------------------------


async def test_tokens_per_minute_admit_exactly_what_fits_and_settlement_corrects(lim: Limits) -> None:
    per_request = lim.tokens()
    await lim.control(tokens_per_minute=5 * per_request + per_request // 2)  # 5.5 requests' bounds
    admitted, refused = await lim.burst()
    assert len(admitted) == 5 and refused == {"rate_limit_exceeded": BURST - 5}
    err = await lim.refused()
    assert err.headers["x-ratelimit-remaining-tokens"] == str(per_request // 2)
    assert "tokens per minute" in err.message and err.headers["retry-after"] == "60"
    # Settled with 30 tokens each: the bounds become actual usage, and more requests fit.
    for req in admitted:
        await lim.settle(req, TokenCounts(10, 20))
    used = await lim.redis.hget(ks.limiter(lim.account), f"tw:{lim.identity.key_id}")
    assert int(used) == 5 * 30
    more, _ = await lim.burst(max_tokens=100)
    assert len(more) == (5 * per_request + per_request // 2 - 150) // per_request


async def test_a_request_larger_than_the_token_limit_is_told_not_to_retry(lim: Limits) -> None:
    await lim.configure(tokens_per_minute=lim.tokens(50))
    await lim.admit(max_tokens=50)
    lim.clock.at += timedelta(minutes=1)
    err = await lim.refused(max_tokens=51)
    assert err.code == "rate_limit_exceeded" and err.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.headers and "lower max_tokens" in err.message


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["key", "account"])
async def test_concurrency_limit_counts_requests_in_flight(lim: Limits, scope: str) -> None:
    if scope == "key":
        await lim.control(max_concurrent=5)
    else:
        await lim.configure(max_concurrent=5)
    admitted, refused = await lim.burst(50)
    assert len(admitted) == 5 and refused == {"rate_limit_exceeded": 45}
    err = await lim.refused()
    assert "5 concurrent requests" in err.message and err.headers["retry-after"] == "1"
    await lim.settle(admitted[0])  # one finishes: one more fits
    admitted[0] = await lim.admit()
    await lim.refused()
    lim.clock.at += timedelta(seconds=61)  # every hold expired unsettled: all released
    again, _ = await lim.burst(50)
    assert len(again) == 5
    for req in again:
        await lim.settle(req)
    assert f"n:{lim.identity.key_id}" not in await lim.counters()
    assert await lim.redis.hlen(ks.hold_info(lim.account)) == 0


async def test_no_limits_no_headers_and_no_state(lim: Limits) -> None:
    req = await lim.admit()
    assert req.rate is None
    await lim.settle(req)
    assert await lim.counters() == {}
    assert await lim.redis.exists(ks.hold_info(lim.account), ks.minute_window(lim.account)) == 0
