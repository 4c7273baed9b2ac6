"""Every limit, defined once. The settings and key-control models, the provisioning schemas, the
CLI flags, the dashboard's limit rows, the refusals and their retry headers, and the admission
and settlement scripts' limit loops (store/lua_contract.py renders this table into them) all
read this table. A new limit of an existing mechanism is one row here.

Mechanisms (how store/lua/place_hold.lua counts; each is one generic loop there):
- `cap`: a counter in a UTC window (day, month; the spend rates' minute and hour) plus what is
  in flight, against the cap. Credit caps count settled credits plus open holds plus this
  request's hold; request caps count admissions including this one. Soft caps follow the
  account's `block_when_cap_reached`. The spend rates (credits per minute, per hour) are credit
  caps in fixed UTC windows, always hard: a runaway loop is stopped within one window.
- `rate`: a sliding one-minute window per scope (requests, or tokens as admitted: input bound +
  output bound). Always hard; refused with the wait until the request fits.
- `concurrency`: requests in flight (open, unexpired holds) per scope. Always hard.

Values are stored in the scope's hash (the account's settings, or the key's controls), credits as
integer micro-credits; a stored value counts only when it is an integer in the row's bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Literal

Scope = Literal["account", "key"]
Mechanism = Literal["cap", "rate", "concurrency"]
Unit = Literal["credits", "requests", "tokens"]
Window = Literal["day", "month", "hour", "minute", "now"]
# When a refused request may succeed: the next UTC day, month, hour or minute, when the sliding
# minute window frees enough, or when a request in flight finishes.
Retry = Literal["next_day", "next_month", "next_hour", "next_minute", "window", "in_flight"]
NEXT: dict[Window, Retry] = {"day": "next_day", "month": "next_month", "hour": "next_hour", "minute": "next_minute"}

# Lua numbers are doubles: every stored value stays below 2**53.
MAX_CREDITS = Decimal(1_000_000_000)
MAX_COUNT = 1_000_000_000
MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    scope: Scope
    name: str  # the JSON field (settings API, key controls, dashboard)
    mechanism: Mechanism
    unit: Unit
    window: Window
    field: str  # the field of the scope's Redis hash
    most: int  # the largest value (credits: whole credits)
    code: str  # the refusal (core/errors.ERROR_TABLE)
    retry: Retry
    flag: str  # the CLI flag (`settings set` or `keys create/set-limits`)
    label: str  # the dashboard row's title
    help: str  # CLI help and docs
    soft: bool = False  # follows block_when_cap_reached; otherwise always hard
    # "end_user": counted per end user of the account (the request's end user; none: not
    # applied); the account's value is the default and an end user's own hash may override it.
    each: Literal["", "end_user"] = ""

    @property
    def least(self) -> int:
        """Caps may be 0 (nothing allowed); a rate or concurrency limit of 0 would be a switch."""
        return 0 if self.mechanism == "cap" else 1

    @property
    def stored_most(self) -> int:
        return self.most * MICRO if self.unit == "credits" else self.most

    @property
    def credits(self) -> bool:
        return self.unit == "credits"


def _cap(scope: Scope, name: str, unit: Unit, window: Window, code: str, label: str, help: str, soft: bool) -> Limit:
    most = int(MAX_CREDITS) if unit == "credits" else MAX_COUNT
    flag = "--" + name.replace("_", "-")
    return Limit(scope, name, "cap", unit, window, name, most, code, NEXT[window], flag, label, help, soft)


def _rate(scope: Scope, name: str, unit: Unit, field: str, flag: str, most: int, label: str, help: str) -> Limit:
    return Limit(scope, name, "rate", unit, "minute", field, most, "rate_limit_exceeded", "window", flag, label, help)


def _concurrency(scope: Scope, help: str) -> Limit:
    return Limit(
        scope, "max_concurrent", "concurrency", "requests", "now", "max_concurrent", 100_000,
        "rate_limit_exceeded", "in_flight", "--max-concurrent", "Requests in flight", help,
    )  # fmt: skip


LIMITS: tuple[Limit, ...] = (
    _cap("account", "daily_request_cap", "requests", "day", "daily_request_cap_reached", "Daily request cap",
         "daily request cap (UTC day); none clears it", soft=True),
    _cap("account", "daily_credit_cap", "credits", "day", "daily_credit_cap_reached", "Daily credit cap",
         "daily inference credit cap (UTC day); none clears it", soft=True),
    _cap("account", "monthly_credit_cap", "credits", "month", "monthly_credit_cap_reached", "Monthly credit cap",
         "monthly inference credit cap (UTC month); none clears it", soft=True),
    _cap("key", "daily_credit_cap", "credits", "day", "key_daily_credit_cap_reached", "Daily credit cap",
         "the key's own daily credit cap (UTC day, always hard)", soft=False),
    _cap("account", "credits_per_minute", "credits", "minute", "credits_per_minute_reached", "Credits per minute",
         "the account's spend rate: credits per UTC minute, held ones included (always hard); none clears it",
         soft=False),
    _cap("account", "credits_per_hour", "credits", "hour", "credits_per_hour_reached", "Credits per hour",
         "the account's spend rate: credits per UTC hour, held ones included (always hard); none clears it",
         soft=False),
    _cap("key", "credits_per_minute", "credits", "minute", "key_credits_per_minute_reached", "Credits per minute",
         "the key's spend rate: credits per UTC minute, held ones included (always hard)", soft=False),
    _cap("key", "credits_per_hour", "credits", "hour", "key_credits_per_hour_reached", "Credits per hour",
         "the key's spend rate: credits per UTC hour, held ones included (always hard)", soft=False),
    _rate("account", "requests_per_minute", "requests", "rpm", "--rpm", 1_000_000, "Requests per minute",
          "the account's requests per minute; none clears it"),
    _rate("account", "tokens_per_minute", "tokens", "tpm", "--tpm", 1_000_000_000, "Tokens per minute",
          "the account's tokens per minute (input + max output at admission)"),
    _rate("key", "requests_per_minute", "requests", "rpm", "--rpm", 1_000_000, "Requests per minute",
          "the key's requests per minute"),
    _rate("key", "tokens_per_minute", "tokens", "tpm", "--tpm", 1_000_000_000, "Tokens per minute",
          "the key's tokens per minute (input + max output at admission)"),
    _concurrency("account", "the account's requests in flight at once; none clears it"),
    _concurrency("key", "the key's requests in flight at once"),
    replace(_cap("account", "end_user_daily_credit_cap", "credits", "day", "end_user_daily_credit_cap_reached",
                 "End-user daily credit cap", "each end user's daily credit cap (UTC day, always hard); "
                 "end users may have their own (end-users set-limits); none clears it", soft=False), each="end_user"),
    replace(_cap("account", "end_user_monthly_credit_cap", "credits", "month", "end_user_monthly_credit_cap_reached",
                 "End-user monthly credit cap", "each end user's monthly credit cap (UTC month, always hard); "
                 "end users may have their own (end-users set-limits); none clears it", soft=False), each="end_user"),
    replace(_rate("account", "end_user_requests_per_minute", "requests", "eu_rpm", "--end-user-rpm", 1_000_000,
                  "End-user requests per minute", "each end user's requests per minute; end users may have "
                  "their own (end-users set-limits); none clears it"), each="end_user"),
)  # fmt: skip
END_USER_LIMITS = tuple(limit for limit in LIMITS if limit.each == "end_user")

ACCOUNT_LIMITS = tuple(limit for limit in LIMITS if limit.scope == "account")
KEY_LIMITS = tuple(limit for limit in LIMITS if limit.scope == "key")
REFUSALS = {limit.code: limit for limit in LIMITS if limit.code != "rate_limit_exceeded"}


def limit_id(row: Limit) -> str:
    """How a refusal names the limit (X-Critique-Limit, error.param): <scope>:<limit>, with the
    per-end-user limits under their own scope (end_user:daily_credit_cap)."""
    if row.each == "end_user":
        return "end_user:" + row.name.removeprefix("end_user_")
    return f"{row.scope}:{row.name}"


def limit(scope: Scope, name: str) -> Limit:
    for row in LIMITS:
        if row.scope == scope and row.name == name:
            return row
    raise KeyError(f"no {scope} limit {name!r}")


def stored_value(row: Limit, raw: str | None) -> int | None:
    """A stored value as the admission script reads it: an integer in the row's bounds, or no limit."""
    if raw is None or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if row.least <= value <= row.stored_most else None
