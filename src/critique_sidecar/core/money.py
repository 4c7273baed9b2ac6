"""Exact money: USD as Decimal, credits stored as integer micro-credits.

Rounding rule (the only one): a charge in credits is rounded UP to the next whole
micro-credit (1e-6 credit). USD amounts are exact (token counts x decimal prices).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import Price
    from .tokens import TokenCounts

MICRO = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are USD per million tokens


def usd_for_tokens(input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal) -> Decimal:
    """Exact USD for a token count at USD-per-million prices."""
    return (input_tokens * input_price + output_tokens * output_price) / TOKENS_PER_PRICE_UNIT


def usd_for_counts(usage: TokenCounts, price: Price) -> Decimal:
    """Exact USD for every dimension of a usage at its own price (input's when it has none);
    reasoning is output, priced once with it."""
    return (
        usage.fresh_input_tokens * price.input
        + usage.cached_input_tokens * price.of(price.cached_input)
        + usage.cache_write_5m_tokens * price.of(price.cache_write_5m)
        + usage.cache_write_1h_tokens * price.of(price.cache_write_1h)
        + usage.output_tokens * price.output
    ) / TOKENS_PER_PRICE_UNIT


def usd_to_micro_credits(usd: Decimal, usd_per_credit: Decimal) -> int:
    """Convert USD to integer micro-credits, rounding up (see module docstring)."""
    micro = (usd / usd_per_credit * MICRO).to_integral_value(rounding=ROUND_CEILING)
    return int(micro)


def format_credits(micro_credits: int) -> str:
    """Micro-credits as a fixed 6-decimal credit string: 1234 -> '0.001234'."""
    sign = "-" if micro_credits < 0 else ""
    whole, frac = divmod(abs(micro_credits), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def parse_credits(text: str) -> int:
    """A credit amount ('12', '0.5') as micro-credits; refuses sub-micro precision."""
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError(f"not a number: {text!r}")
    with localcontext() as ctx:  # enough precision that the product is exact, never rounded
        ctx.prec = max(ctx.prec, len(value.as_tuple().digits) + 7)
        micro = value * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{text!r} has more than 6 decimal places")
    return int(micro)


def format_usd(usd: Decimal) -> str:
    """Exact USD without exponent or trailing zeros: Decimal('4.5E-7') -> '0.00000045'."""
    text = format(usd.normalize(), "f")
    return text if text not in ("-0",) else "0"
