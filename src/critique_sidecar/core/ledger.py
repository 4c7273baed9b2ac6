"""The storage-neutral ledger interface the core meters through (Redis implements it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .limits import RateStatus


@dataclass(frozen=True, slots=True)
class HoldRequest:
    account: str
    request_id: str
    amount: int  # micro-credits: the request's maximum cost
    now_ms: int
    expires_ms: int
    day: str  # UTC window names, e.g. 2026-11-26 and 2026-11
    month: str
    # what the per-key controls and the key and rate limits check
    key_id: str = ""
    model: str = ""
    tokens: int = 0  # input bound + output bound, counted against tokens-per-minute limits
    end_user: str = ""  # the request's end user (core/end_user.py): per-end-user limits


@dataclass(frozen=True, slots=True)
class HoldResult:
    """Either admitted (code None) or refused with an error-table code and the numbers behind it."""

    code: str | None
    warnings: tuple[str, ...] = ()
    training_opt_in: bool = False  # the account-wide opt-in setting
    funds: dict[str, int] = field(default_factory=dict)  # balance, floor, held: micro-credits at the decision
    control: str = ""  # the refusing control, e.g. key:requests_per_minute:50 (or the expiry ms)
    retry_after_ms: int = 0  # rate limits: when it would fit; -1: it never can
    rate: RateStatus | None = None  # the tightest per-minute limits, for the x-ratelimit-* headers


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One settlement: written with the charge, in the same atomic step."""

    request_id: str
    account: str
    key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    credits: int  # micro-credits charged
    usd: str  # exact USD as a decimal string
    price_version: str
    opt_in: bool
    estimated: bool
    status: str  # ok | estimated | interrupted | upstream_error | cancelled
    latency_ms: int
    ts_ms: int
    day: str
    month: str
    overage: int = 0  # micro-credits of usage beyond the hold, not charged (core/settlement.py)
    # What the charge is made of, besides input and output (parts of them: core/tokens.py), and
    # the endpoint that served it (core/endpoints/).
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    endpoint: str = "chat.completions"
    end_user: str = ""  # the end user the request was made for (core/end_user.py); "" when none
    paid_by: str = ""  # filled by the ledger with the charge: the grants that paid it (settle.lua)


@dataclass(frozen=True, slots=True)
class SettleResult:
    credits: int  # what this request is charged (the first settlement's, on a repeat)
    applied: bool  # False when the request id was already settled


class SettlementRejected(Exception):
    """The store answered and refused this settlement (a script error, a key of the wrong type):
    retrying will not help, and it must not hold back the settlements behind it. Not an outage."""


class Ledger(Protocol):
    async def place_hold(self, hold: HoldRequest) -> HoldResult: ...

    async def settle(self, record: UsageRecord) -> SettleResult: ...
