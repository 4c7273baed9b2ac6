"""Account controls at admission on real Redis, through the core's Meter with an injected clock:
every cap in both block modes, the reserve floor and the training opt-in price."""

from __future__ import annotations

from datetime import UTC, datetime

from critique_sidecar.core.catalog import price_for
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.money import MICRO, format_credits
from critique_sidecar.core.tokens import TokenCounts

from .account_kit import BODY, CATALOG, MAX_TOKENS, NOON, USD_PER_CREDIT, Env


def test_hold_is_positive_and_a_settled_charge_is_below_it() -> None:
    # The scenarios below rely on this: charge(10 in, MAX_TOKENS out) < hold (bound in, MAX_TOKENS out).
    meter = Meter(CATALOG, None, USD_PER_CREDIT)  # type: ignore[arg-type]
    chat = meter.parse(CHAT, BODY)
    price = price_for(CATALOG, chat.model, NOON, False)
    hold = meter.credits_for(TokenCounts(chat.input_bound, MAX_TOKENS), price)
    assert chat.input_bound == len(BODY) + 16 and chat.output_bound == MAX_TOKENS
    assert 0 < meter.credits_for(TokenCounts(10, MAX_TOKENS), price) < hold


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
    opt_price = price_for(env.meter.catalog, opt_req.body.model, opt_req.started_at, opt_in=True)
    assert opt_price.version.endswith("/training-opt-in")
    # (10 x 0.0375 + 100 x 0.075) / 1e6 USD = 0.000007875 USD = 787.5 -> 788 micro-credits
    assert env.meter.charge(opt_req, usage, price=opt_price).credits == 788
    # (10 x 0.15 + 100 x 0.30) / 1e6 USD = 0.0000315 USD = 3150 micro-credits
    assert await env.settle(list_req, usage) == 3150
