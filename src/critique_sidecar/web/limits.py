"""Every limit's use and what is left, as the dashboard and GET
/api/settings/inference-api/limits show them: one row per limit of core/limit_table.py, for the
account and for the calling key. A 402 or 429 names its limit as `<scope>:<name>`
(X-Critique-Limit); the same names key this answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.auth import Identity
from ..core.clock import Clock, day_window, month_window, to_ms, window_end
from ..core.dashboard_source import DashboardSource, KeyUsage, RateUsage, UsageSnapshot
from ..core.key_controls import KeyControls
from ..core.limit_table import ACCOUNT_LIMITS, KEY_LIMITS, Limit
from ..core.money import MICRO, format_credits
from ..core.scopes import LIMITS_PATH, SETTINGS_READ
from ..json_http import json_response

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def percent(spent: int, cap: int) -> str:
    """spent/cap as a percentage with 2 decimals, rounded down (never shows 100% early)."""
    if cap <= 0:
        return "100.00"
    return str((Decimal(spent) * 100 / Decimal(cap)).quantize(Decimal("0.01"), rounding=ROUND_DOWN))


def cap_row(row: Limit, spent: int, cap: int | None, now: datetime) -> dict[str, Any]:
    show = format_credits if row.credits else (lambda v: v)
    return {
        "mechanism": row.mechanism,
        "label": row.label,
        "unit": row.unit,
        "window": row.window,
        "spent": show(spent),
        "cap": None if cap is None else show(cap),
        "remaining": None if cap is None else show(max(cap - spent, 0)),
        "percent": None if cap is None else percent(spent, cap),
        "reached": cap is not None and spent >= cap,
        "resets_at": iso(window_end(row.window, now)),
    }


def rate_row(row: Limit, limit: int | None, used: int) -> dict[str, Any]:
    """A per-minute limit's status: what the last 60 seconds used (counted while a limit is set)."""
    return {
        "mechanism": row.mechanism,
        "label": row.label,
        "unit": row.unit,
        "limit": limit,
        "used": used,
        "remaining": None if limit is None else max(limit - used, 0),
        "reached": limit is not None and used >= limit,
        "window_s": 60,
    }


def concurrency_row(row: Limit, limit: int | None, in_flight: int) -> dict[str, Any]:
    return {
        "mechanism": row.mechanism,
        "label": row.label,
        "unit": row.unit,
        "limit": limit,
        "in_flight": in_flight,
        "reached": limit is not None and in_flight >= limit,
    }


def account_limits(snap: UsageSnapshot, rates: RateUsage, now: datetime) -> dict[str, Any]:
    """One entry per account limit of core/limit_table.py, in its order."""
    s = snap.settings
    out: dict[str, Any] = {}
    for row in ACCOUNT_LIMITS:
        if row.each == "end_user":  # counted per end user: the account's value is a default
            continue
        value = s.limit(row.name)
        if row.mechanism == "cap":
            out[row.name] = cap_row(row, snap.cap_usage(row, to_ms(now)), value, now)
        elif row.mechanism == "rate":
            out[row.name] = rate_row(row, value, rates.requests if row.unit == "requests" else rates.tokens)
        else:
            out[row.name] = concurrency_row(row, value, rates.in_flight)
    return out


def key_limit_legend() -> list[dict[str, str]]:
    """How the page words each key limit: the JSON field and its unit."""
    units = {"cap": "{unit}/{window}", "rate": "{short}/min", "concurrency": "in flight"}
    short = {"requests": "req", "tokens": "tokens", "credits": "credits"}
    return [
        {
            "name": row.name,
            "suffix": units[row.mechanism].format(unit=row.unit, window=row.window, short=short[row.unit]),
        }
        for row in KEY_LIMITS
    ]


def key_limits(controls: KeyControls, usage: KeyUsage, now: datetime) -> dict[str, Any]:
    """One entry per key limit of core/limit_table.py, in its order (limit None: not set)."""
    out: dict[str, Any] = {}
    for row in KEY_LIMITS:
        value = controls.limits.get(row.name)
        if row.mechanism == "cap":
            spent = usage.spend.spent(row.window, to_ms(now)) if row.window in ("minute", "hour") else usage.day_credits
            out[row.name] = cap_row(row, spent, value, now)
        elif row.mechanism == "rate":
            out[row.name] = rate_row(row, value, usage.requests if row.unit == "requests" else usage.tokens)
        else:
            out[row.name] = concurrency_row(row, value, usage.in_flight)
    return out


def balance_row(snap: UsageSnapshot) -> dict[str, Any]:
    """The balance over the reserve floor: what insufficient_credits (account:balance, or
    account:reserve_floor) refuses against."""
    floor = int(snap.settings.reserve_credits_for_review * MICRO)
    available = snap.balance - floor - snap.held
    return {
        "balance": format_credits(snap.balance),
        "held": format_credits(snap.held),
        "reserve_floor": format_credits(floor),
        "available": format_credits(max(available, 0)),
        "floor_reached": available <= 0,
    }


def limits_routes(source: DashboardSource, identify: Identify, clock: Clock) -> list[Route]:
    async def limits(request: Request) -> Response:
        identity = await identify(request, SETTINGS_READ)
        now = clock()
        utc = now.astimezone(UTC)
        day = day_window(utc)
        snap = await source.snapshot(identity.account, [day], month_window(utc))
        rates = await source.rates(identity.account, to_ms(now))
        info = (await source.keys(identity.account, [identity.key_id])).get(identity.key_id)
        usage = await source.key_usage(identity.account, identity.key_id, day, to_ms(now))
        return json_response(
            {
                "object": "inference_limits",
                "account": identity.account,
                "generated_at": iso(now),
                "balance": balance_row(snap),
                "account_limits": account_limits(snap, rates, now),
                "key_id": identity.key_id,
                "key_limits": key_limits(info.controls if info else KeyControls(), usage, now),
            }
        )

    return [Route(LIMITS_PATH, limits, methods=["GET"])]
