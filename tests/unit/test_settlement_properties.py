"""Property test of the settlement rule (core/settlement.py) over arbitrary usage values: whatever
a model server puts in `usage`, the charge is a whole number of micro-credits between 0 and the
hold, the tokens charged are within the hold's bounds, and sane usage within the bounds is
charged exactly (the expected amount computed here by hand, not by the project's pricing)."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from critique_sidecar.core.catalog import Price
from critique_sidecar.core.endpoints.chat import usage as usage_from_obj
from critique_sidecar.core.settlement import MAX_OVERAGE, settlement_charge
from critique_sidecar.core.tokens import TokenCounts

CENT = Decimal("0.01")
LIST = Price(Decimal("0.15"), Decimal("0.30"), "v/list", False)
OPT_IN = Price(Decimal("0.0375"), Decimal("0.075"), "v/opt-in", True)

counts = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.none()
    | st.booleans()
    | st.integers(min_value=0, max_value=10**7)
)
usage_objects = st.fixed_dictionaries({}, optional={"prompt_tokens": counts, "completion_tokens": counts})


def by_hand(input_tokens: int, output_tokens: int, pin: Decimal, pout: Decimal) -> int:
    usd = (input_tokens * pin + output_tokens * pout) / 1_000_000
    return int((usd / CENT * 1_000_000).to_integral_value(rounding=ROUND_CEILING))


@settings(max_examples=500, deadline=None)
@given(
    usage=usage_objects,
    input_bound=st.integers(min_value=1, max_value=1_000_000),
    output_bound=st.integers(min_value=1, max_value=32_768 * 8),
    estimate_in=st.integers(min_value=0, max_value=2_000_000),
    estimate_out=st.integers(min_value=0, max_value=10**9),
    opt_in=st.booleans(),
)
def test_a_settlement_never_charges_more_than_its_hold(
    usage: dict[str, Any], input_bound: int, output_bound: int, estimate_in: int, estimate_out: int, opt_in: bool
) -> None:
    hold = by_hand(input_bound, output_bound, LIST.input, LIST.output)  # the hold: list price, full bounds
    reported = usage_from_obj({"usage": usage})
    price = OPT_IN if opt_in else LIST
    charge = settlement_charge(
        reported, TokenCounts(estimate_in, estimate_out), TokenCounts(input_bound, output_bound), price, CENT, hold
    )

    assert isinstance(charge.credits, int) and 0 <= charge.credits <= hold
    assert 0 <= charge.usage.input_tokens <= input_bound and 0 <= charge.usage.output_tokens <= output_bound
    assert 0 <= charge.overage <= MAX_OVERAGE
    assert charge.estimated == (reported is None)
    sane = all(
        isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool) and usage[k] >= 0
        for k in ("prompt_tokens", "completion_tokens")
    )
    assert sane == (reported is not None)
    used = (usage["prompt_tokens"], usage["completion_tokens"]) if sane else (estimate_in, estimate_out)
    within = used[0] <= input_bound and used[1] <= output_bound
    if within:
        assert charge.credits == by_hand(*used, price.input, price.output) and charge.overage == 0
        assert (charge.usage.input_tokens, charge.usage.output_tokens) == used
    else:
        clamped = (min(used[0], input_bound), min(used[1], output_bound))
        assert charge.credits == by_hand(*clamped, price.input, price.output)
        assert charge.overage > 0 or by_hand(*used, price.input, price.output) == charge.credits


def test_the_issue_numbers_by_hand() -> None:
    # deepseek v4 flash, a 3-token prompt bound, max_tokens 32768 forwarded: a server reporting a
    # whole context window of output is charged the hold, and the rest is overage.
    bounds = TokenCounts(3, 32_768)
    hold = by_hand(3, 32_768, LIST.input, LIST.output)
    assert hold == 983_085  # (3 x 0.15 + 32768 x 0.30) / 1e6 USD = 0.00983085 USD = 0.983085 credits
    charge = settlement_charge(TokenCounts(3, 999_997), TokenCounts(0, 0), bounds, LIST, CENT, hold)
    # reported: (3 x 0.15 + 999997 x 0.30) / 1e6 USD = 0.29999955 USD = 29.999955 credits (what main charged)
    assert (charge.credits, charge.overage) == (983_085, 29_999_955 - 983_085)


# -- dimensions: cache reads and writes at their own prices, reasoning inside output ----------

DIMENSIONED = Price(
    Decimal("0.15"),
    Decimal("0.30"),
    "v/dims",
    False,
    cached_input=Decimal("0.015"),
    cache_write_5m=Decimal("0.1875"),
    cache_write_1h=Decimal("0.30"),
)


def by_hand_dims(fresh: int, cached: int, w5: int, w1h: int, out: int, price: Price) -> int:
    usd = (
        fresh * price.input
        + cached * (price.cached_input if price.cached_input is not None else price.input)
        + w5 * (price.cache_write_5m if price.cache_write_5m is not None else price.input)
        + w1h * (price.cache_write_1h if price.cache_write_1h is not None else price.input)
        + out * price.output
    ) / 1_000_000
    return int((usd / CENT * 1_000_000).to_integral_value(rounding=ROUND_CEILING))  # rounded up once


@settings(max_examples=500, deadline=None)
@given(
    fresh=st.integers(min_value=0, max_value=200_000),
    cached=st.integers(min_value=0, max_value=200_000),
    w5=st.integers(min_value=0, max_value=200_000),
    w1h=st.integers(min_value=0, max_value=200_000),
    out=st.integers(min_value=0, max_value=100_000),
    reasoning=st.integers(min_value=0, max_value=100_000),
    input_bound=st.integers(min_value=1, max_value=1_000_000),
    output_bound=st.integers(min_value=1, max_value=100_000),
    dims=st.booleans(),
)
def test_every_dimension_is_priced_once_and_the_charge_stays_within_the_hold(
    fresh: int,
    cached: int,
    w5: int,
    w1h: int,
    out: int,
    reasoning: int,
    input_bound: int,
    output_bound: int,
    dims: bool,
) -> None:
    price = DIMENSIONED if dims else LIST
    usage = TokenCounts(fresh + cached + w5 + w1h, out, cached, w5, w1h, min(reasoning, out))
    highest_input = max(
        [price.input, *(p for p in (price.cached_input, price.cache_write_5m, price.cache_write_1h) if p)]
    )
    hold = by_hand(input_bound, output_bound, highest_input, price.output)
    charge = settlement_charge(usage, TokenCounts(0, 0), TokenCounts(input_bound, output_bound), price, CENT, hold)

    assert 0 <= charge.credits <= hold
    assert charge.usage.input_tokens <= input_bound and charge.usage.output_tokens <= output_bound
    c = charge.usage
    parts = c.cached_input_tokens + c.cache_write_5m_tokens + c.cache_write_1h_tokens
    assert 0 <= parts <= c.input_tokens and c.reasoning_tokens <= c.output_tokens
    expected = by_hand_dims(
        c.fresh_input_tokens,
        c.cached_input_tokens,
        c.cache_write_5m_tokens,
        c.cache_write_1h_tokens,
        c.output_tokens,
        price,
    )
    assert charge.credits == expected
    if usage.input_tokens <= input_bound and out <= output_bound:
        assert c == usage and charge.overage == 0
        # reasoning is part of output: never priced on top of it
        assert expected == by_hand_dims(fresh, cached, w5, w1h, out, price)


def test_without_dimension_prices_cached_tokens_cost_the_input_price() -> None:
    usage = TokenCounts(1000, 100, cached_input_tokens=800, reasoning_tokens=60)
    charge = settlement_charge(usage, TokenCounts(0, 0), TokenCounts(10_000, 1000), LIST, CENT, 10**9)
    assert charge.credits == by_hand(1000, 100, LIST.input, LIST.output)


# -- a stream that ended without its own final usage (the cut-stream rule) ----------------------


@settings(max_examples=300, deadline=None)
@given(
    reported_in=st.integers(min_value=0, max_value=10_000),
    reported_out=st.integers(min_value=0, max_value=10_000),
    delivered_out=st.integers(min_value=0, max_value=10_000),
    final=st.booleans(),
)
def test_a_cut_stream_is_never_charged_below_what_it_delivered(
    reported_in: int, reported_out: int, delivered_out: int, final: bool
) -> None:
    bounds = TokenCounts(20_000, 20_000)
    hold = by_hand(20_000, 20_000, LIST.input, LIST.output)
    estimate = TokenCounts(50, delivered_out)
    charge = settlement_charge(TokenCounts(reported_in, reported_out), estimate, bounds, LIST, CENT, hold, final=final)
    assert charge.usage.input_tokens == reported_in  # reported input is kept either way
    if final:  # the response's own count: trusted (within the bounds)
        assert charge.usage.output_tokens == reported_out and not charge.estimated
    else:  # partial counts can raise a charge, never lower it below delivery
        assert charge.usage.output_tokens == max(reported_out, delivered_out)
        assert charge.estimated == (delivered_out > reported_out)
    assert charge.credits <= hold
