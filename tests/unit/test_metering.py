"""metering.py: refusal messages, charges, and Meter against an in-memory ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from critique_sidecar.core.auth import Identity
from critique_sidecar.core.catalog import Catalog, load_catalog, price_for
from critique_sidecar.core.endpoints.base import estimate_tokens
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.ledger import HoldResult, SettleResult
from critique_sidecar.core.metering import Charge, Meter, hold_refusal
from critique_sidecar.core.money import usd_for_tokens, usd_to_micro_credits
from critique_sidecar.core.settlement import Delivered
from critique_sidecar.core.tokens import TokenCounts

from ..fakes import FixedClock, MemoryLedger

DEEPSEEK = "deepseek/deepseek-v4-flash"
TENCENT = "tencent/hy3-preview"
NEMOTRON = "nvidia/nemotron-3-ultra-550b-a55b"
CENT = Decimal("0.01")
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
IDENT = Identity("acct-1", "key_1", frozenset({"write:inference"}))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def make_meter(catalog: Catalog, ledger: MemoryLedger, now: datetime = NOW) -> Meter:
    return Meter(catalog, ledger, usd_per_credit=CENT, clock=FixedClock(now))


def chat_body(model: str | None = DEEPSEEK, **extra: object) -> bytes:
    body: dict[str, object] = {"messages": [{"role": "user", "content": "Draft a type for idempotent enqueue."}]}
    if model is not None:
        body["model"] = model
    body.update(extra)
    return orjson.dumps(body)


# --- hold_refusal -------------------------------------------------------------------------------


def test_floor_is_named_when_only_the_floor_blocks() -> None:
    # balance 10, floor 5, nothing held; the hold of 6 fits the balance but not balance - floor
    result = HoldResult("insufficient_credits", funds={"balance": 10_000_000, "floor": 5_000_000, "held": 0})
    err = hold_refusal(result, 6_000_000, NOW)
    assert (err.code, err.status) == ("insufficient_credits", 402)
    assert "reserve floor of 5.000000 credits" in err.message
    assert "balance is too low" not in err.message
    assert "up to 6.000000 credits" in err.message
    assert "only 5.000000 are available" in err.message


def test_floor_is_named_when_balance_minus_holds_exactly_covers() -> None:
    result = HoldResult("insufficient_credits", funds={"balance": 10_000_000, "floor": 1, "held": 4_000_000})
    err = hold_refusal(result, 6_000_000, NOW)
    assert "reserve floor of 0.000001 credits" in err.message
    assert "only 5.999999 are available" in err.message


def test_balance_too_low_when_balance_minus_holds_cannot_cover() -> None:
    # even without the floor, 10 - 8 held = 2 < 6
    result = HoldResult("insufficient_credits", funds={"balance": 10_000_000, "floor": 5_000_000, "held": 8_000_000})
    err = hold_refusal(result, 6_000_000, NOW)
    assert "the balance is too low" in err.message
    assert "reserve floor" not in err.message
    assert "only 0.000000 are available" in err.message  # never negative


def test_balance_too_low_without_floor() -> None:
    result = HoldResult("insufficient_credits", funds={"balance": 1_000_000, "floor": 0, "held": 0})
    err = hold_refusal(result, 2_500_000, NOW)
    assert "the balance is too low" in err.message
    assert "reserve floor" not in err.message
    assert "only 1.000000 are available" in err.message
    assert "up to 2.500000 credits" in err.message


def test_insufficient_credits_without_detail() -> None:
    err = hold_refusal(HoldResult("insufficient_credits"), 1, NOW)
    assert err.code == "insufficient_credits"
    assert "balance is too low" in err.message


@pytest.mark.parametrize("code", ["daily_request_cap_reached", "daily_credit_cap_reached"])
@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (datetime(2026, 11, 26, 20, 0, 0, tzinfo=UTC), 4 * 3600),
        (datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC), 86_400),
        (datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC), 1),
        (datetime(2026, 12, 31, 12, 30, 15, tzinfo=UTC), 11 * 3600 + 29 * 60 + 45),
        (datetime(2028, 2, 28, 23, 0, 0, tzinfo=UTC), 3600),  # leap year: next day is 29 Feb
    ],
)
def test_daily_caps_carry_retry_after_to_utc_midnight(code: str, now: datetime, seconds: int) -> None:
    err = hold_refusal(HoldResult(code), 1, now)
    assert (err.code, err.status) == (code, 429)
    assert err.headers["retry-after"] == str(seconds)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    assert now + timedelta(seconds=int(err.headers["retry-after"])) == midnight
    assert "00:00 UTC" in err.message


def test_monthly_cap_and_disabled() -> None:
    monthly = hold_refusal(HoldResult("monthly_credit_cap_reached"), 1, NOW)
    assert (monthly.code, monthly.status) == ("monthly_credit_cap_reached", 429)
    assert "Monthly" in monthly.message
    disabled = hold_refusal(HoldResult("inference_disabled"), 1, NOW)
    assert (disabled.code, disabled.status) == ("inference_disabled", 403)
    assert "retry-after" not in disabled.headers


# --- Meter.charge -------------------------------------------------------------------------------


async def admitted(catalog: Catalog, raw: bytes | None = None, opt_in: bool = False, now: datetime = NOW):
    ledger = MemoryLedger()
    meter = make_meter(catalog, ledger, now)
    chat = meter.parse(CHAT, raw or chat_body())
    req = await meter.admit(IDENT, chat, opt_in)
    return meter, ledger, req


async def test_charge_with_usage_is_exact(catalog: Catalog) -> None:
    long_body = chat_body(DEEPSEEK, messages=[{"role": "user", "content": "x" * 2000}])  # input bound > 1000
    meter, _, req = await admitted(catalog, long_body)
    charge = meter.charge(req, TokenCounts(1000, 500))
    assert charge == Charge(
        usage=TokenCounts(1000, 500),
        usd=Decimal("0.0003"),  # 1000 x 0.15/M + 500 x 0.30/M
        credits=30_000,  # 0.0003 USD / 0.01 = 0.03 credits
        estimated=False,
        price=req.price,
    )


async def test_charge_rounds_up_per_request(catalog: Catalog) -> None:
    meter, _, req = await admitted(catalog, opt_in=True)
    opt_in_price = price_for(catalog, req.body.model, NOW, opt_in=True)
    charge = meter.charge(req, TokenCounts(1, 0), price=opt_in_price)
    assert charge.usd == Decimal("0.0000000375")
    assert charge.credits == 4


async def test_charge_without_usage_is_estimated(catalog: Catalog) -> None:
    meter, _, req = await admitted(catalog)
    delivered = 1001
    charge = meter.charge(req, None, Delivered(delivered))
    assert charge.estimated is True
    assert charge.usage == TokenCounts(req.body.input_estimate, estimate_tokens(delivered))
    assert charge.usage.output_tokens == 251
    expected_usd = usd_for_tokens(req.body.input_estimate, 251, Decimal("0.15"), Decimal("0.30"))
    assert charge.usd == expected_usd
    assert charge.credits == usd_to_micro_credits(expected_usd, CENT)


async def test_charge_without_usage_or_text_still_charges_input(catalog: Catalog) -> None:
    meter, _, req = await admitted(catalog)
    charge = meter.charge(req, None)
    assert charge.estimated is True
    assert charge.usage.output_tokens == 0
    assert charge.usage.input_tokens == req.body.input_estimate > 0
    assert charge.credits > 0


async def test_reported_zero_usage_is_not_estimated(catalog: Catalog) -> None:
    meter, _, req = await admitted(catalog)
    charge = meter.charge(req, TokenCounts(0, 0), Delivered(5000))
    assert charge.estimated is False
    assert (charge.usd, charge.credits) == (Decimal(0), 0)


# --- Meter.admit --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [DEEPSEEK, TENCENT, NEMOTRON])
async def test_admit_holds_max_cost_at_start_price(catalog: Catalog, model: str) -> None:
    raw = chat_body(model, max_tokens=1000)
    _meter, ledger, req = await admitted(catalog, raw)
    chat = req.body
    assert chat.output_bound == 1000
    price = price_for(catalog, chat.model, NOW, False)
    usd = usd_for_tokens(chat.input_bound, 1000, price.input, price.output)
    expected = usd_to_micro_credits(usd, CENT)
    assert len(ledger.holds) == 1
    hold = ledger.holds[0]
    assert hold.amount == req.hold == expected > 0
    assert hold.account == "acct-1"
    assert hold.request_id == req.request_id and req.request_id.startswith("req_")
    assert (hold.day, hold.month) == ("2026-03-14", "2026-03")
    assert hold.now_ms == int(NOW.timestamp() * 1000)
    assert hold.expires_ms == hold.now_ms + 900_000
    assert req.price == price
    assert req.started_at == NOW


async def test_admit_hold_covers_any_real_charge(catalog: Catalog) -> None:
    raw = chat_body(DEEPSEEK, max_tokens=200)
    meter, _, req = await admitted(catalog, raw)
    # the worst case the upstream can report (one token per body byte, every output token)
    worst = meter.charge(req, TokenCounts(len(raw), 200))
    assert worst.credits <= req.hold


async def test_admit_uses_model_output_budget_without_max_tokens(catalog: Catalog) -> None:
    _meter, ledger, req = await admitted(catalog, chat_body(TENCENT))
    price = req.price
    usd = usd_for_tokens(req.body.input_bound, 32_768, price.input, price.output)
    assert ledger.holds[0].amount == usd_to_micro_credits(usd, CENT)


async def test_opt_in_header_holds_at_the_normal_price(catalog: Catalog) -> None:
    # The discount is given only at settlement, once the capture is written (test_capture.py).
    _, ledger, req = await admitted(catalog, chat_body(DEEPSEEK, max_tokens=100), opt_in=True)
    assert (req.price.input, req.price.output, req.price.opt_in, req.opt_in) == (
        Decimal("0.15"),
        Decimal("0.30"),
        False,
        True,
    )
    usd = usd_for_tokens(req.body.input_bound, 100, Decimal("0.15"), Decimal("0.30"))
    assert ledger.holds[0].amount == usd_to_micro_credits(usd, CENT)


async def test_account_opt_in_prices_the_charge_but_hold_stays_at_list(catalog: Catalog) -> None:
    ledger = MemoryLedger(result=HoldResult(code=None, training_opt_in=True))
    meter = make_meter(catalog, ledger)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(DEEPSEEK, max_tokens=100)), opt_in_header=False)
    list_usd = usd_for_tokens(req.body.input_bound, 100, Decimal("0.15"), Decimal("0.30"))
    assert ledger.holds[0].amount == usd_to_micro_credits(list_usd, CENT)
    assert req.opt_in is True and req.price.opt_in is False


async def test_account_opt_in_on_other_model_stays_at_list(catalog: Catalog) -> None:
    ledger = MemoryLedger(result=HoldResult(code=None, training_opt_in=True))
    meter = make_meter(catalog, ledger)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(TENCENT)), opt_in_header=True)
    assert (req.price.input, req.price.opt_in, req.opt_in) == (Decimal("0.0567"), False, False)


@pytest.mark.parametrize(
    ("now", "promo"),
    [
        (datetime(2026, 6, 19, 23, 59, 59, tzinfo=UTC), True),
        (datetime(2026, 6, 20, 0, 0, 0, tzinfo=UTC), False),
    ],
)
async def test_admit_prices_at_start_time(catalog: Catalog, now: datetime, promo: bool) -> None:
    _, ledger, req = await admitted(catalog, chat_body(NEMOTRON, max_tokens=10), now=now)
    expected_in, expected_out = (Decimal("0.30"), Decimal("1.20")) if promo else (Decimal("0.60"), Decimal("2.40"))
    assert (req.price.input, req.price.output) == (expected_in, expected_out)
    usd = usd_for_tokens(req.body.input_bound, 10, expected_in, expected_out)
    assert ledger.holds[0].amount == usd_to_micro_credits(usd, CENT)


async def test_price_is_kept_from_start_even_if_settled_after_promo_ends(catalog: Catalog) -> None:
    clock = FixedClock(datetime(2026, 6, 19, 23, 59, 59, tzinfo=UTC))
    ledger = MemoryLedger()
    meter = Meter(catalog, ledger, usd_per_credit=CENT, clock=clock)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(NEMOTRON)), False)
    clock.now = datetime(2026, 6, 20, 0, 0, 5, tzinfo=UTC)
    charge = meter.charge(req, TokenCounts(100, 0))
    assert charge.usd == Decimal("0.00003")  # 100 x 0.30/M: the promotion's input price
    await meter.settle(req, charge, "ok")
    record = ledger.records[0]
    assert record.price_version.endswith("promo:intro-50-off")
    assert (record.day, record.month) == ("2026-06-19", "2026-06")  # windows of the start time


async def test_admit_refused_raises_hold_refusal(catalog: Catalog) -> None:
    now = datetime(2026, 11, 26, 22, 0, 0, tzinfo=UTC)
    ledger = MemoryLedger(result=HoldResult("daily_credit_cap_reached"))
    meter = make_meter(catalog, ledger, now)
    with pytest.raises(ApiError) as err:
        await meter.admit(IDENT, meter.parse(CHAT, chat_body()), False)
    assert err.value.code == "daily_credit_cap_reached"
    assert err.value.headers["retry-after"] == "7200"


async def test_admit_refused_for_credits_names_the_hold(catalog: Catalog) -> None:
    ledger = MemoryLedger(result=HoldResult("insufficient_credits", funds={"balance": 5, "floor": 0, "held": 0}))
    meter = make_meter(catalog, ledger)
    with pytest.raises(ApiError) as err:
        await meter.admit(IDENT, meter.parse(CHAT, chat_body(max_tokens=1000)), False)
    hold = ledger.holds[0].amount
    assert err.value.status == 402
    assert f"up to {hold // 1_000_000}.{hold % 1_000_000:06d} credits" in err.value.message


async def test_admit_passes_warnings_through(catalog: Catalog) -> None:
    ledger = MemoryLedger(result=HoldResult(code=None, warnings=("daily_credit_cap_reached",)))
    meter = make_meter(catalog, ledger)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body()), False)
    assert req.warnings == ("daily_credit_cap_reached",)


# --- Meter.settle -------------------------------------------------------------------------------


async def test_settle_writes_one_record(catalog: Catalog) -> None:
    meter, ledger, req = await admitted(catalog)
    charge = meter.charge(req, TokenCounts(100, 50))
    result = await meter.settle(req, charge, "ok")
    assert result == SettleResult(charge.credits, applied=True)
    (record,) = ledger.records
    assert record.request_id == req.request_id
    assert (record.account, record.key_id, record.model) == ("acct-1", "key_1", DEEPSEEK)
    assert (record.input_tokens, record.output_tokens) == (100, 50)
    assert record.credits == charge.credits
    assert Decimal(record.usd) == charge.usd
    assert "e" not in record.usd.lower()
    assert record.price_version == "v5.2/deepseek/deepseek-v4-flash/list"
    assert record.estimated is False
    assert record.status == "ok"
    assert record.latency_ms >= 0


async def test_settle_is_a_no_op_the_second_time(catalog: Catalog) -> None:
    meter, ledger, req = await admitted(catalog)
    first_charge = meter.charge(req, TokenCounts(100, 50))
    first = await meter.settle(req, first_charge, "ok")
    again = await meter.settle(req, meter.charge(req, TokenCounts(9999, 9999)), "ok")
    released = await meter.settle(req, None, "client_cancelled")
    assert again is first and released is first
    assert len(ledger.records) == 1
    assert ledger.settled == {req.request_id: first_charge.credits}


async def test_settle_estimated_charge_is_marked(catalog: Catalog) -> None:
    meter, ledger, req = await admitted(catalog, chat_body(stream=True))
    await meter.settle(req, meter.charge(req, None, Delivered(40)), "estimated")
    record = ledger.records[0]
    assert record.estimated is True
    assert record.output_tokens == 10


async def test_settle_without_charge_releases(catalog: Catalog) -> None:
    meter, ledger, req = await admitted(catalog)
    result = await meter.settle(req, None, "upstream_error")
    assert result.credits == 0
    record = ledger.records[0]
    assert (record.credits, record.usd, record.input_tokens, record.output_tokens) == (0, "0", 0, 0)
    assert record.estimated is False
    assert record.status == "upstream_error"


async def test_request_ids_are_unique(catalog: Catalog) -> None:
    ledger = MemoryLedger()
    meter = make_meter(catalog, ledger)
    chat = meter.parse(CHAT, chat_body())
    ids = {(await meter.admit(IDENT, chat, False)).request_id for _ in range(50)}
    assert len(ids) == 50
