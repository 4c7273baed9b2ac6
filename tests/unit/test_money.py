"""money.py: exact USD, micro-credits rounded up, credit and USD formatting."""

from __future__ import annotations

from decimal import Decimal

import pytest

from critique_sidecar.core.money import (
    MICRO,
    format_credits,
    format_usd,
    parse_credits,
    usd_for_tokens,
    usd_to_micro_credits,
)

CENT = Decimal("0.01")


def test_usd_for_tokens_is_exact_decimal() -> None:
    usd = usd_for_tokens(1_000_000, 1_000_000, Decimal("0.15"), Decimal("0.30"))
    assert isinstance(usd, Decimal)
    assert usd == Decimal("0.45")
    assert usd_for_tokens(1, 0, Decimal("0.0375"), Decimal("0.075")) == Decimal("0.0000000375")
    assert usd_for_tokens(0, 1, Decimal("0.0375"), Decimal("0.075")) == Decimal("0.000000075")
    assert usd_for_tokens(0, 0, Decimal("0.15"), Decimal("0.30")) == 0


def test_usd_for_tokens_has_no_float_error() -> None:
    # 0.1 + 0.2 style sums must stay exact.
    usd = usd_for_tokens(3, 7, Decimal("0.0567"), Decimal("0.189"))
    assert usd == (3 * Decimal("0.0567") + 7 * Decimal("0.189")) / 1_000_000
    assert usd == Decimal("0.0000014931")
    assert str(usd_for_tokens(123_456, 654_321, Decimal("0.0567"), Decimal("0.189"))) == "0.1306666242"


def test_one_token_at_opt_in_rate_rounds_up_to_4_micro_credits() -> None:
    usd = usd_for_tokens(1, 0, Decimal("0.0375"), Decimal("0.075"))
    # 0.0000000375 USD / 0.01 USD per credit = 0.00000375 credits = 3.75 micro-credits -> 4
    assert usd_to_micro_credits(usd, CENT) == 4


@pytest.mark.parametrize(
    ("usd", "per_credit", "micro"),
    [
        (Decimal("0"), CENT, 0),
        (Decimal("0.01"), CENT, 1_000_000),  # exactly one credit: no rounding
        (Decimal("0.00000001"), CENT, 1),  # exactly one micro-credit
        (Decimal("0.000000010000000001"), CENT, 2),  # a hair above one micro-credit -> up
        (Decimal("0.000000000000000001"), CENT, 1),  # any positive amount costs at least 1
        (Decimal("0.45"), CENT, 45_000_000),
        (Decimal("1"), Decimal("0.03"), 33_333_334),  # 33.333...  credits -> rounded up
    ],
)
def test_usd_to_micro_credits_rounds_up(usd: Decimal, per_credit: Decimal, micro: int) -> None:
    result = usd_to_micro_credits(usd, per_credit)
    assert isinstance(result, int) and not isinstance(result, bool)
    assert result == micro
    # never short: the integer charge covers the exact amount, by less than one micro-credit
    exact = usd / per_credit * MICRO
    assert result >= exact
    assert result - exact < 1


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (1234, "0.001234"),
        (1_000_000, "1.000000"),
        (12_500_000, "12.500000"),
        (-1, "-0.000001"),
        (-12_345_678, "-12.345678"),
        (10**15 + 7, "1000000000.000007"),
    ],
)
def test_format_credits(micro: int, text: str) -> None:
    assert format_credits(micro) == text
    assert parse_credits(text) == micro  # round trip


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("12", 12_000_000),
        ("0.5", 500_000),
        ("0.000001", 1),
        ("1.500000000", 1_500_000),  # trailing zeros beyond 6 places are harmless
        ("1E+3", 1_000_000_000),
        ("-0.25", -250_000),
        ("0", 0),
    ],
)
def test_parse_credits(text: str, micro: int) -> None:
    result = parse_credits(text)
    assert result == micro
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "text",
    [
        "0.0000001",
        "1.0000005",
        "1e-7",
        "0.1234567",
        # more significant digits than Decimal's default 28-digit context: must not be rounded away
        "1.0000000000000000000000000001",
        "123456789012345678901234.0000001",
    ],
)
def test_parse_credits_refuses_more_than_6_decimals(text: str) -> None:
    with pytest.raises(ValueError, match="more than 6 decimal places"):
        parse_credits(text)


@pytest.mark.parametrize("text", ["NaN", "nan", "-NaN", "sNaN", "inf", "Infinity", "-Infinity"])
def test_parse_credits_refuses_non_finite(text: str) -> None:
    with pytest.raises(ValueError, match="not a number"):
        parse_credits(text)


@pytest.mark.parametrize("text", ["", "abc", "1,5", "1.2.3", "0x10"])
def test_parse_credits_refuses_garbage(text: str) -> None:
    # The CLI turns both ValueError and ArithmeticError (decimal.InvalidOperation) into usage errors.
    with pytest.raises((ValueError, ArithmeticError)):
        parse_credits(text)


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (Decimal("4.5E-7"), "0.00000045"),
        (Decimal("0.0000000375"), "0.0000000375"),
        (Decimal("1E-20"), "0.00000000000000000001"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.50"), "1.5"),
        (Decimal("0.45000"), "0.45"),
        (Decimal("0"), "0"),
        (Decimal("0E-10"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("-0.000"), "0"),
        (Decimal("-1.25E-8"), "-0.0000000125"),
        (Decimal("12345678901234567890"), "12345678901234567890"),
    ],
)
def test_format_usd_never_uses_exponent(usd: Decimal, text: str) -> None:
    out = format_usd(usd)
    assert out == text
    assert "e" not in out.lower()
    assert Decimal(out) == usd


def test_format_usd_of_computed_tiny_charge() -> None:
    usd = usd_for_tokens(1, 0, Decimal("0.0375"), Decimal("0.075"))
    assert str(usd) == "3.75E-8"  # what str() would have shown
    assert format_usd(usd) == "0.0000000375"
