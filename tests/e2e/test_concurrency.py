"""Hundreds of concurrent chat requests through each front door (the real Envoy stack, the ASGI
gateway) against an account whose limits allow only a few: exactly that few are admitted, no
limit is ever crossed, and every credit that left the balance is in the usage records and in
the responses' headers.

Why the admitted count is exact whatever the interleaving: each request holds H (its maximum
cost) and is charged C < H. A limit L = k*H (above the floor, or a cap) admits request i iff
what earlier requests occupy (C if settled, H if still open) plus H fits in L. k requests
always fit; a (k+1)-th never does as long as k*C > (k-1)*H, i.e. k*(H - C) < H, which the
request shape below guarantees (checked by `test_request_shape`).

Cap overshoot bound: zero. Admission counts open holds at maximum cost against every cap and
the floor, and a charge never exceeds its hold while the upstream reports usage within the
request's bounds (input <= body bytes + 16, output <= max_tokens); then day spend + held <=
daily cap, month spend + held <= monthly cap and balance - held >= floor at every instant.
(An upstream reporting more than those bounds could overshoot by at most the excess of the
requests in flight; that case is not exercised here.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.config import Config
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.clock import day_window, month_window, utc_now
from critique_sidecar.core.endpoints import chat as chat_endpoint
from critique_sidecar.core.endpoints.base import Limits
from critique_sidecar.core.money import MICRO, format_credits, parse_credits
from critique_sidecar.devtools.fake_upstream import prompt_tokens
from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace as ks

from .helpers import FrontDoor

pytestmark = pytest.mark.slow

CONCURRENCY = 240
CATALOG = load_catalog()
MODEL = "deepseek/deepseek-v4-flash"
MAX_TOKENS = 2000
REQUEST = {
    "model": MODEL,
    "messages": [{"role": "user", "content": f"[[tokens:{MAX_TOKENS}]] concurrency"}],
    "max_tokens": MAX_TOKENS,
}
RAW = json.dumps(REQUEST).encode()


CHAT = chat_endpoint.parse(RAW, Limits(CATALOG))
# By hand, not through the product's pricing (deepseek 0.15 / 0.30 USD per million tokens at
# 0.01 USD a credit: 15 and 30 micro-credits a token). RAW is 133 bytes, so Meter.admit bounds
# the input at 133 + 16 = 149 tokens and reserves 149 * 15 + 2000 * 30 = 62,235 micro-credits;
# the fake upstream reports 7 prompt tokens (27 characters // 4 + 1): 7 * 15 + 2000 * 30 = 60,105.
HOLD = 62_235
CHARGE = 60_105


def test_request_shape() -> None:
    """The request is held at H and charged C with k*(H - C) < H for every k used below."""
    assert CHAT.input_bound == len(RAW) + 16 == 149 and CHAT.output_bound == MAX_TOKENS
    assert prompt_tokens(REQUEST) == 7 and Config().usd_per_credit == Decimal("0.01")
    assert 0 < CHARGE < HOLD
    assert 8 * (HOLD - CHARGE) < HOLD


@dataclass(frozen=True)
class Scenario:
    name: str
    admitted: int  # what the limits allow
    refusal: str  # the code every other request gets
    grant: int  # micro-credits
    settings: dict[str, str] = field(default_factory=dict)  # `settings set` flags
    floor: int = 0
    daily_cap: int | None = None
    monthly_cap: int | None = None
    request_cap: int | None = None
    warnings: dict[str, int] = field(default_factory=dict)  # x-critique-warning value -> responses


FLOOR = 2 * MICRO
RICH = 100 * MICRO
SCENARIOS = [
    Scenario("floor", 5, "insufficient_credits", FLOOR + 5 * HOLD, floor=FLOOR),
    Scenario("daily_credit_cap", 4, "daily_credit_cap_reached", RICH, daily_cap=4 * HOLD),
    Scenario("monthly_credit_cap", 3, "monthly_credit_cap_reached", RICH, monthly_cap=3 * HOLD),
    Scenario("daily_request_cap", 6, "daily_request_cap_reached", RICH, request_cap=6),
    # Soft mode: the caps only warn, the floor binds. Request i is warned for the daily cap
    # (2H) once what i-1 requests occupy exceeds H, i.e. from i = 3 (2C > H); for the
    # monthly cap (3H) from i = 4 (3C > 2H). So 2 clean, 1 daily-only, 3 with both.
    Scenario(
        "soft_caps_hard_floor", 6, "insufficient_credits", FLOOR + 6 * HOLD, {"--block-when-cap-reached": "false"},
        floor=FLOOR, daily_cap=2 * HOLD, monthly_cap=3 * HOLD,
        warnings={"": 2, "daily_credit_cap_reached": 1, "daily_credit_cap_reached,monthly_credit_cap_reached": 3},
    ),
]  # fmt: skip


class Monitor:
    """Samples the account's ledger (one MULTI snapshot at a time) while the burst runs and
    records the worst values seen, so "never" is checked during the burst, not only after."""

    def __init__(self, r: aioredis.Redis, account: str) -> None:
        self.r, self.account = r, account
        now = utc_now()
        self.day, self.month = ks.day(account, day_window(now)), ks.month(account, month_window(now))
        self.min_free_balance: int | None = None  # balance - held
        self.max_day_committed = 0  # day spend + held
        self.max_month_committed = 0
        self.max_admitted = 0
        self.samples = 0

    async def sample(self) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hmget(ks.account(self.account), "balance", "held")
            p.hmget(self.day, "credits", "admitted")
            p.hget(self.month, "credits")
            (balance, held), (day_credits, admitted), month_credits = await p.execute()
        free = int(balance or 0) - int(held or 0)
        self.min_free_balance = free if self.min_free_balance is None else min(self.min_free_balance, free)
        self.max_day_committed = max(self.max_day_committed, int(day_credits or 0) + int(held or 0))
        self.max_month_committed = max(self.max_month_committed, int(month_credits or 0) + int(held or 0))
        self.max_admitted = max(self.max_admitted, int(admitted or 0))
        self.samples += 1

    async def watch(self, burst: asyncio.Future[Any]) -> None:
        while not burst.done():
            await self.sample()  # each sample awaits Redis, so the burst makes progress meanwhile
        await self.sample()


async def burst(door: FrontDoor, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=door.base_url, limits=limits, timeout=60) as http:
        return list(
            await asyncio.gather(
                *(http.post("/api/v1/chat/completions", content=RAW, headers=headers) for _ in range(CONCURRENCY))
            )
        )


class Watcher(Protocol):
    async def watch(self, burst: asyncio.Future[Any]) -> None: ...


async def watched_burst(
    monitor: Watcher, requests: Coroutine[Any, Any, list[httpx.Response]]
) -> tuple[list[httpx.Response], Counter[int], Counter[str], list[httpx.Response]]:
    """Run the burst while `monitor` samples the ledger; the responses, their statuses, the
    refusals' error codes and the 200s (test_scale_out.py runs its own Monitor through it)."""
    running = asyncio.ensure_future(requests)
    await monitor.watch(running)
    responses = running.result()
    statuses = Counter(resp.status_code for resp in responses)
    codes = Counter(resp.json()["error"]["code"] for resp in responses if resp.status_code != 200)
    return responses, statuses, codes, [resp for resp in responses if resp.status_code == 200]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_concurrent_burst_admits_exactly_what_the_limits_allow(
    stack: Stack, front_door: FrontDoor, account: str, sc: Scenario
) -> None:
    key = stack.create_key(account)["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", format_credits(sc.grant))
    flags = dict(sc.settings)
    flags["--reserve-floor"] = format_credits(sc.floor)
    for flag, value in (("--daily-credit-cap", sc.daily_cap), ("--monthly-credit-cap", sc.monthly_cap)):
        if value is not None:
            flags[flag] = format_credits(value)
    if sc.request_cap is not None:
        flags["--daily-request-cap"] = str(sc.request_cap)
    stack.cli("settings", "set", "--account", account, *(x for kv in flags.items() for x in kv))

    r = aioredis.Redis.from_url(str(stack.redis_url))
    try:
        monitor = Monitor(r, account)
        responses, statuses, codes, ok = await watched_burst(monitor, burst(front_door, key))
        report = f"{sc.name}: statuses {dict(statuses)}, codes {dict(codes)}, hold {HOLD}, charge {CHARGE}"
        print(report)
        assert len(responses) == CONCURRENCY
        assert len(ok) == sc.admitted, report
        assert codes == {sc.refusal: CONCURRENCY - sc.admitted}, report
        if sc.warnings:
            assert Counter(resp.headers.get("x-critique-warning", "") for resp in ok) == sc.warnings
        else:
            assert not [resp for resp in ok if "x-critique-warning" in resp.headers]

        # No limit was crossed at any sampled instant, nor at the end.
        assert monitor.samples > 1
        assert monitor.min_free_balance is not None and monitor.min_free_balance >= sc.floor
        if sc.daily_cap is not None and sc.settings.get("--block-when-cap-reached") != "false":
            assert monitor.max_day_committed <= sc.daily_cap
        if sc.monthly_cap is not None and sc.settings.get("--block-when-cap-reached") != "false":
            assert monitor.max_month_committed <= sc.monthly_cap
        if sc.request_cap is not None:
            assert monitor.max_admitted <= sc.request_cap

        # Conservation: what left the balance = the usage records = the charged headers.
        final_balance, held = (int(v or 0) for v in await r.hmget(ks.account(account), "balance", "held"))
        rows: Any = await r.xrange(ks.usage_stream(account))
        records = [fields for _, fields in rows]
        recorded = sum(int(f[b"credits"]) for f in records)
        headers = sum(parse_credits(resp.headers["x-critique-credits-charged"]) for resp in ok)
        assert held == 0 and await r.hlen(ks.holds(account)) == 0
        assert len(records) == sc.admitted
        assert sc.grant - final_balance == recorded == headers == sc.admitted * CHARGE
        assert final_balance >= sc.floor
        day_credits = int(await r.hget(monitor.day, "credits") or 0)
        assert day_credits == recorded
        if sc.daily_cap is not None and sc.settings.get("--block-when-cap-reached") != "false":
            assert day_credits <= sc.daily_cap  # overshoot: zero
        if sc.monthly_cap is not None and sc.settings.get("--block-when-cap-reached") != "false":
            assert int(await r.hget(monitor.month, "credits") or 0) <= sc.monthly_cap
        print(
            f"{sc.name}: {CONCURRENCY} requests, {len(ok)} admitted, balance {format_credits(sc.grant)} -> "
            f"{format_credits(final_balance)}, charged {format_credits(recorded)} (records) = {format_credits(headers)} (headers), "
            f"{monitor.samples} ledger samples, min balance-held {format_credits(monitor.min_free_balance)}"
        )
    finally:
        await r.aclose()


def test_scenarios_cover_every_limit() -> None:
    refusals = {sc.refusal for sc in SCENARIOS}
    assert refusals == {
        "insufficient_credits",
        "daily_credit_cap_reached",
        "monthly_credit_cap_reached",
        "daily_request_cap_reached",
    }
    assert all(sc.admitted < CONCURRENCY // 10 for sc in SCENARIOS)  # the limits allow only a few
    assert Decimal(HOLD) / MICRO < 1  # holds are small and known (credits)
