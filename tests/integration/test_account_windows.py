"""Account controls over time on real Redis, with an injected clock: the UTC day and month
windows roll over by key name, and an unsettled hold expires and gives its credits back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.store import keyspace as ks

from .account_kit import HOLD_TTL_S, NOON, Env

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
    assert nov == dec == str(charged).encode()


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
