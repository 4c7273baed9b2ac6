"""Account controls on real Redis: every setting, both block modes, the reserve floor, UTC
window roll-over and hold expiry, through the core's Meter with an injected clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar import cli
from critique_sidecar.core.account_settings import AccountSettings, SettingsPatch
from critique_sidecar.core.auth import Authenticator, Identity
from critique_sidecar.core.catalog import load_catalog, price_for
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.metering import Meter, MeteredRequest
from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.core.scopes import SETTINGS_PATH
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore
from critique_sidecar.web.app import WebContext, build_web_app
from critique_sidecar.web.settings import MAX_BODY_BYTES

UTC = UTC
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
        chat = self.meter.parse(BODY)
        price = price_for(CATALOG, chat.model, self.clock(), False)
        return self.meter.credits_for(TokenCounts(chat.input_token_bound, chat.max_output_tokens), price)

    async def configure(self, **fields: Any) -> AccountSettings:
        return await self.settings.patch(self.account, SettingsPatch.parse(fields))

    async def admit(self, opt_in: bool = False) -> MeteredRequest:
        return await self.meter.admit(self.identity, self.meter.parse(BODY), opt_in)

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
        data = await self.redis.hgetall(ks.day(self.account, day))
        return {k.decode(): int(v) for k, v in data.items() if b":" not in k}


NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
async def env(redis_client: aioredis.Redis, account: str) -> Env:
    clock = Clock(NOON)
    meter = Meter(CATALOG, RedisLedger(redis_client), USD_PER_CREDIT, hold_ttl_s=HOLD_TTL_S, clock=clock)
    return Env(
        redis_client, account, clock, meter, RedisSettingsStore(redis_client), RedisAccounts(redis_client),
        Identity(account, "key_test", frozenset({"write:inference"})),
    )  # fmt: skip


def test_hold_is_positive_and_a_settled_charge_is_below_it() -> None:
    # The scenarios below rely on this: charge(10 in, MAX_TOKENS out) < hold (bound in, MAX_TOKENS out).
    meter = Meter(CATALOG, None, USD_PER_CREDIT)  # type: ignore[arg-type]
    chat = meter.parse(BODY)
    price = price_for(CATALOG, chat.model, NOON, False)
    hold = meter.credits_for(TokenCounts(chat.input_token_bound, MAX_TOKENS), price)
    assert chat.input_token_bound == len(BODY) + 16 and chat.max_output_tokens == MAX_TOKENS
    assert 0 < meter.credits_for(TokenCounts(10, MAX_TOKENS), price) < hold


# -- the settings store --------------------------------------------------------------------


async def test_defaults_for_an_unconfigured_account(env: Env) -> None:
    got = await env.settings.get(env.account)
    assert got.to_json() == {
        "enabled": True, "monthly_credit_cap": None, "daily_credit_cap": None, "daily_request_cap": None,
        "reserve_credits_for_review": "0.000000", "block_when_cap_reached": True, "deepseek_training_opt_in": False,
    "requests_per_minute": None, "tokens_per_minute": None, "max_concurrent": None,
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


# -- each setting, hard mode ---------------------------------------------------------------


async def test_disabled_account_is_refused_and_nothing_changes(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(enabled=False)
    err = await env.refused()
    assert (err.status, err.code) == (403, "inference_disabled")
    assert await env.ledger() == {"balance": 10 * MICRO, "held": 0, "holds": 0}
    assert await env.day("2026-11-26") == {}  # not even counted as a request

    await env.configure(enabled=True)
    req = await env.admit()
    assert (await env.ledger())["held"] == env.hold == req.hold


async def test_daily_request_cap_counts_admissions_and_sends_retry_after(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(daily_request_cap=3)
    for _ in range(3):
        await env.settle(await env.admit())
    err = await env.refused()
    assert (err.status, err.code) == (429, "daily_request_cap_reached")
    assert err.headers["retry-after"] == str(12 * 3600)  # noon -> next UTC midnight
    assert (await env.day("2026-11-26"))["admitted"] == 3  # refusals are not counted


async def test_daily_credit_cap_counts_open_holds(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(daily_credit_cap=format_credits(2 * env.hold))
    first, second = await env.admit(), await env.admit()  # two open holds fill the cap exactly
    err = await env.refused()
    assert (err.status, err.code) == (429, "daily_credit_cap_reached")
    assert err.headers["retry-after"] == str(12 * 3600)
    charged = await env.settle(first)
    assert charged < env.hold
    assert (await env.refused()).code == "daily_credit_cap_reached"  # spent + held + hold > cap still
    await env.settle(second)
    day = await env.day("2026-11-26")
    assert day["credits"] == 2 * charged <= 2 * env.hold


async def test_monthly_credit_cap_spans_days_and_retries_after_the_month(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    env.clock.at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    charged = await env.settle(await env.admit())
    await env.configure(
        monthly_credit_cap=format_credits(charged + env.hold - 1), daily_credit_cap=format_credits(10 * env.hold)
    )
    env.clock.at = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # a fresh day, the same month
    err = await env.refused()
    assert (err.status, err.code) == (429, "monthly_credit_cap_reached")
    # 10 days 15 hours to 2026-12-01T00:00Z; and the SDKs are told not to retry it
    assert err.headers["retry-after"] == str((10 * 24 + 15) * 3600)
    assert err.headers["x-should-retry"] == "false"
    await env.configure(monthly_credit_cap=format_credits(charged + env.hold))
    await env.admit()  # exactly at the cap is allowed


async def test_zero_caps_block_everything(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(daily_request_cap=0)
    assert (await env.refused()).code == "daily_request_cap_reached"
    await env.configure(daily_request_cap=None, monthly_credit_cap=0)
    assert (await env.refused()).code == "monthly_credit_cap_reached"
    await env.configure(monthly_credit_cap=None)
    await env.admit()


# -- soft mode -----------------------------------------------------------------------------


async def test_soft_mode_admits_over_caps_with_warnings(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(
        block_when_cap_reached=False,
        daily_request_cap=1,
        daily_credit_cap=0,
        monthly_credit_cap=format_credits(env.hold),
    )
    first = await env.admit()
    assert first.warnings == ("daily_credit_cap_reached",)  # request 1 of 1; month cap fits one hold exactly
    second = await env.admit()
    assert second.warnings == ("daily_request_cap_reached", "daily_credit_cap_reached", "monthly_credit_cap_reached")
    assert (await env.ledger())["held"] == 2 * env.hold

    await env.configure(block_when_cap_reached=True)  # the same state refused in hard mode
    err = await env.refused()
    assert err.code == "daily_request_cap_reached"


async def test_soft_mode_keeps_the_floor_and_an_empty_balance_hard(env: Env) -> None:
    await env.configure(block_when_cap_reached=False, daily_credit_cap=0)
    err = await env.refused()  # zero balance
    assert (err.status, err.code) == (402, "insufficient_credits")
    await env.accounts.grant(env.account, 5 * MICRO)
    await env.configure(reserve_credits_for_review=5)
    err = await env.refused()
    assert (err.status, err.code) == (402, "insufficient_credits")
    assert "reserve floor of 5.000000 credits" in err.message


# -- the reserve floor ---------------------------------------------------------------------


async def test_floor_refusal_names_the_floor_and_balance_never_goes_below_it(env: Env) -> None:
    floor = 3 * MICRO
    await env.accounts.grant(env.account, floor + 2 * env.hold)
    await env.configure(reserve_credits_for_review=format_credits(floor))
    first, second = await env.admit(), await env.admit()  # exactly two holds above the floor
    err = await env.refused()
    assert (err.status, err.code) == (402, "insufficient_credits")
    assert f"the reserve floor of {format_credits(floor)} credits is kept for review" in err.message
    assert "0.000000 are available" in err.message
    await env.settle(first)
    await env.settle(second, TokenCounts(len(BODY) + 16, MAX_TOKENS))  # the full hold
    state = await env.ledger()
    assert state["held"] == 0 and state["balance"] >= floor


async def test_a_balance_too_low_even_without_the_floor_says_so(env: Env) -> None:
    await env.accounts.grant(env.account, env.hold - 1)
    err = await env.refused()
    assert err.code == "insufficient_credits" and "the balance is too low" in err.message
    await env.accounts.grant(env.account, 1)
    await env.admit()  # exactly one hold


# -- training opt-in -----------------------------------------------------------------------


async def test_account_training_opt_in_prices_at_the_opt_in_tier(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    list_req = await env.admit()
    await env.configure(deepseek_training_opt_in=True)
    opt_req = await env.admit()
    assert (list_req.opt_in, opt_req.opt_in) == (False, True)  # the account setting is read at admission
    # Held at the normal price: the discount is given only once the capture is written (settle_completed).
    assert opt_req.price == list_req.price and opt_req.hold == list_req.hold
    usage = TokenCounts(10, MAX_TOKENS)
    opt_price = price_for(env.meter.catalog, opt_req.chat.model, opt_req.started_at, opt_in=True)
    assert opt_price.version.endswith("/training-opt-in")
    # (10 x 0.0375 + 100 x 0.075) / 1e6 USD = 0.000007875 USD = 787.5 -> 788 micro-credits
    assert env.meter.charge(opt_req, usage, price=opt_price).credits == 788
    # (10 x 0.15 + 100 x 0.30) / 1e6 USD = 0.0000315 USD = 3150 micro-credits
    assert await env.settle(list_req, usage) == 3150


# -- UTC windows roll over by key name -----------------------------------------------------


async def test_daily_windows_roll_over_at_utc_midnight(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(daily_request_cap=1, daily_credit_cap=format_credits(env.hold))
    env.clock.at = datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)
    await env.settle(await env.admit())
    err = await env.refused()
    assert err.code == "daily_request_cap_reached" and err.headers["retry-after"] == "1"
    env.clock.at = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    await env.settle(await env.admit())
    assert (await env.day("2026-11-26"))["requests"] == 1
    assert (await env.day("2026-11-27"))["requests"] == 1


async def test_monthly_window_rolls_over_at_month_end(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    await env.configure(monthly_credit_cap=format_credits(env.hold))  # room for one request a month
    env.clock.at = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    charged = await env.settle(await env.admit())
    err = await env.refused()
    assert err.code == "monthly_credit_cap_reached"
    env.clock.at = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    december = await env.admit()
    assert (await env.refused()).code == "monthly_credit_cap_reached"  # December's own cap binds
    await env.settle(december)
    nov = await env.redis.hget(ks.month(env.account, "2026-11"), "credits")
    dec = await env.redis.hget(ks.month(env.account, "2026-12"), "credits")
    assert int(nov) == charged and int(dec) == charged


async def test_a_request_settled_after_midnight_counts_in_the_day_it_started(env: Env) -> None:
    await env.accounts.grant(env.account, 10 * MICRO)
    env.clock.at = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    req = await env.admit()
    env.clock.at = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    charged = await env.settle(req)
    assert (await env.day("2026-11-30"))["credits"] == charged
    assert await env.day("2026-12-01") == {}


# -- holds expire --------------------------------------------------------------------------


async def test_an_unsettled_hold_expires_and_its_credits_come_back(env: Env) -> None:
    await env.accounts.grant(env.account, env.hold)  # room for exactly one hold
    abandoned = await env.admit()
    env.clock.at = NOON + timedelta(seconds=HOLD_TTL_S - 1)
    err = await env.refused()
    assert err.code == "insufficient_credits"
    assert await env.ledger() == {"balance": env.hold, "held": env.hold, "holds": 1}

    env.clock.at = NOON + timedelta(seconds=HOLD_TTL_S + 1)  # past the hold's expiry
    fresh = await env.admit()  # this admission's sweep released the abandoned hold
    holds = await env.redis.hgetall(ks.holds(env.account))
    assert list(holds) == [fresh.request_id.encode()]
    assert await env.ledger() == {"balance": env.hold, "held": env.hold, "holds": 1}

    # The abandoned request settling late is still charged once, and frees nothing twice.
    late = await env.settle(abandoned)
    state = await env.ledger()
    assert state == {"balance": env.hold - late, "held": env.hold, "holds": 1}


# -- the operator CLI ----------------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("CRITIQUE_REDIS_URL", redis_url)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_settings_set_and_show(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, account: str
) -> None:
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--enabled", "false",
        "--daily-credit-cap", "12.5", "--monthly-credit-cap", "100", "--daily-request-cap", "40",
        "--reserve-floor", "2.25", "--block-when-cap-reached", "false", "--training-opt-in", "true", "--json",
        "--rpm", "600", "--max-concurrent", "8",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "enabled": False, "monthly_credit_cap": "100.000000", "daily_credit_cap": "12.500000", "daily_request_cap": 40,
        "reserve_credits_for_review": "2.250000", "block_when_cap_reached": False, "deepseek_training_opt_in": True,
        "requests_per_minute": 600, "tokens_per_minute": None, "max_concurrent": 8,
        "notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None,
    }  # fmt: skip
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--daily-credit-cap", "none"
    )
    assert code == 0 and "daily_credit_cap: none" in out.splitlines()
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account)
    assert code == 0
    assert out.splitlines() == [
        "enabled: false", "monthly_credit_cap: 100.000000", "daily_credit_cap: none", "daily_request_cap: 40",
        "reserve_credits_for_review: 2.250000", "block_when_cap_reached: false", "deepseek_training_opt_in: true",
        "requests_per_minute: 600", "tokens_per_minute: none", "max_concurrent: 8",
        "notify_webhook_url: none", "notify_thresholds_percent: none", "notify_low_balance_credits: none",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--daily-credit-cap", "-1", "is negative"),
        ("--daily-credit-cap", "ten", "non-numeric"),
        ("--monthly-credit-cap", "0.0000001", "more than 6 decimal places"),
        ("--daily-request-cap", "1.5", "must be an integer"),
        ("--daily-request-cap", "-2", "must be an integer >= 0"),
        ("--enabled", "maybe", "must be true or false"),
        ("--reserve-floor", "none", "cannot be null"),
    ],
)
def test_cli_settings_bad_values_exit_2_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    account: str,
    flag: str,
    value: str,
    says: str,
) -> None:
    assert (
        _cli(monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--daily-request-cap", "5")[0]
        == 0
    )
    code, out, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--enabled", "false", flag, value
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"critique-sidecar: error: {flag}: ") and says in err
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account, "--json")
    assert json.loads(out)["enabled"] is True and json.loads(out)["daily_request_cap"] == 5


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


# -- observe: the notification settings through the CLI ------------------------------------


def test_cli_notification_settings_and_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, account: str
) -> None:
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account,
        "--notify-webhook-url", "https://hooks.example.com/in", "--notify-thresholds", "80,50,100",
        "--notify-low-balance", "5", "--json",
    )  # fmt: skip
    got = json.loads(out)
    assert code == 0 and got["notify_thresholds_percent"] == [50, 80, 100]
    assert got["notify_low_balance_credits"] == "5.000000" and got["notify_webhook_secret"].startswith("whsec_")
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account, "--json")
    assert code == 0 and "notify_webhook_secret" not in json.loads(out)  # shown once
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-webhook-secret",
        "operator-chosen-secret-0123456789", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["notify_webhook_secret"] == "operator-chosen-secret-0123456789"
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-thresholds", "50,x"
    )
    assert code == 2 and "--notify-thresholds" in err
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-webhook-secret", "short"
    )
    assert code == 2 and "--notify-webhook-secret" in err
