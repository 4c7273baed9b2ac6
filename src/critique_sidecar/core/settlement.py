"""The settlement rule: what a finished request is charged, whatever the model server reported.

A hold reserves the request's maximum cost: input up to `input_token_bound`, output up to the
output bound the upstream received times `n`, at the normal price. Settlement:

1. Usage is trusted only as JSON integers >= 0 (`usage.usage_from_obj`); anything else
   (negative, fractional, strings, floats, missing fields) counts as missing usage.
2. Missing usage is estimated by one rule: input from the whole request body, output from every
   delta field delivered (content, reasoning, tool-call arguments, refusal), ~4 bytes per token;
   the charge is marked estimated.
3. Each count is bounded by what the hold reserved for it. Usage beyond it is not charged; what
   it would have cost is recorded as `overage` (micro-credits) so operators see the model server
   that overshot.
4. The bounded usage is priced exactly and rounded up to a micro-credit. Because the hold priced
   the bounds at the normal price and every settlement price is at most that, the charge is never
   above the hold; it is capped at it all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .catalog import Price
from .money import MICRO, usd_for_tokens, usd_to_micro_credits
from .tokens import TokenCounts

# Overage is reported, never charged: bounded so a record field (int64) and a Lua number hold it.
MAX_OVERAGE = 2**53 - 1
_MAX_COUNTED = 10**15  # tokens beyond this are counted as this for the overage figure


@dataclass(frozen=True, slots=True)
class Charge:
    usage: TokenCounts  # the tokens charged for (bounded)
    usd: Decimal
    credits: int  # micro-credits, at most the hold
    estimated: bool
    price: Price
    overage: int = 0  # micro-credits of usage beyond the hold's bounds, not charged


def settlement_charge(
    reported: TokenCounts | None,
    estimate: TokenCounts,
    bounds: TokenCounts,
    price: Price,
    usd_per_credit: Decimal,
    hold: int,
) -> Charge:
    """The charge for a finished request (see the module docstring for the rule)."""
    estimated = reported is None
    usage = estimate if reported is None else reported
    charged = TokenCounts(min(usage.input_tokens, bounds.input_tokens), min(usage.output_tokens, bounds.output_tokens))
    usd = usd_for_tokens(charged.input_tokens, charged.output_tokens, price.input, price.output)
    credits = usd_to_micro_credits(usd, usd_per_credit)
    overage = 0
    if charged != usage:
        whole = usd_for_tokens(
            min(usage.input_tokens, _MAX_COUNTED), min(usage.output_tokens, _MAX_COUNTED), price.input, price.output
        )
        overage = min(max(usd_to_micro_credits(whole, usd_per_credit) - credits, 0), MAX_OVERAGE)
    if credits > hold:  # unreachable by construction (see the docstring); the hold is the bound
        overage = min(overage + credits - hold, MAX_OVERAGE)
        credits = hold
        usd = Decimal(hold) * usd_per_credit / MICRO
    return Charge(charged, usd, credits, estimated, price, overage)
