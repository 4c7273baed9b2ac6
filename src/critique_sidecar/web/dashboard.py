"""GET /api/dashboard/inference-api (usage summary or activity log) and GET /inference-dashboard.

Summary (`?days=7|30|90`, default 30): per-day credits, tokens and requests for the last N UTC
days ending today (days without traffic are zeros), totals, attribution by model and by API
key, each cap's status and the balance against the reserve floor. It reads the daily rollup
hashes only (N of them) and the balance and settings, all in one atomic read, so the numbers
agree with each other and with the ledger.

The summary's `by_end_user` is the period's top 10 end users by credits (core/end_user.py), with
`end_users_more` true when there are others. End users by prefix (`?view=end_users&prefix=P&days=
7|30|90&limit=1..100`, default 10): the end users whose id starts with P, most credits first
(among the first 1000 ids with that prefix; `has_more` says there were more). No prefix: the top N.

Activity (`?view=activity&limit=N&cursor=C`): the usage records newest first, `limit` 1..200
(default 50). Keyset pagination: `next_cursor` is an opaque token for the position after the
last record returned (derived from its stream id), so records arriving meanwhile never shift,
repeat or skip a page. A cursor that is not one we issued is a 400.

Both need `read:inference` or `admin:inference` and only ever show the caller's own account
(the account comes from the key, never from the request). Credits are exact 6-decimal strings;
no prompt or completion text exists in what these read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import end_user
from ..core.auth import Identity
from ..core.clock import Clock, day_window, month_window, to_ms
from ..core.dashboard_source import (
    ActivityPage,
    Counts,
    DashboardSource,
    EndUsers,
    KeyInfo,
    RateUsage,
    UsageSnapshot,
    parse_record_id,
)
from ..core.errors import ApiError
from ..core.money import format_credits
from ..core.scopes import DASHBOARD, DASHBOARD_PATH
from ..core.stores import GrantView
from ..json_http import json_response
from .limits import account_limits, balance_row, iso, key_limit_legend

PAGE_PATH = "/inference-dashboard"
DAYS = (7, 30, 90)
DEFAULT_DAYS = 30
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
TOP_END_USERS = 10  # the summary's by_end_user
MAX_END_USERS = 100
_CURSOR_PREFIX = "u1:"

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


# -- parameters ------------------------------------------------------------------------


def _bad(param: str, message: str) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def parse_days(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_DAYS
    if raw in {str(d) for d in DAYS}:
        return int(raw)
    raise _bad("days", "'days' must be 7, 30 or 90")


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> int:
    if raw is None:
        return default
    if re.fullmatch(r"[0-9]{1,4}", raw) and 1 <= int(raw) <= most:
        return int(raw)
    raise _bad("limit", f"'limit' must be an integer from 1 to {most}")


def parse_prefix(raw: str | None) -> str:
    """An end-user id prefix: what an id may hold (core/end_user.py), but it may end in a space."""
    if raw is None or raw == "":
        return ""
    if len(raw) <= end_user.MAX_LEN and raw.isprintable() and not raw[0].isspace():
        return raw
    raise _bad("prefix", f"'prefix' must be 1 to {end_user.MAX_LEN} printable characters")


def encode_cursor(stream_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + stream_id).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> str | None:
    """The stream id inside a cursor we issued; invalid_request for anything else."""
    if raw is None:
        return None
    try:
        if not raw or len(raw) > 80 or not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
            raise ValueError("bad characters")
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError("bad prefix")
        stream_id = text[len(_CURSOR_PREFIX) :]
        parse_record_id(stream_id)
        if encode_cursor(stream_id) != raw:
            raise ValueError("not canonical")
        return stream_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad("cursor", "'cursor' is not a valid activity cursor; use next_cursor from a previous page") from None


# -- the summary -----------------------------------------------------------------------


def _counts(c: Counts) -> dict[str, Any]:
    return {
        "credits": format_credits(c.credits),
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "requests": c.requests,
    }


def window_days(now: datetime, days: int) -> list[str]:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [day_window(today - timedelta(days=i)) for i in range(days - 1, -1, -1)]


def build_summary(
    account: str,
    snap: UsageSnapshot,
    keys: dict[str, KeyInfo],
    days: int,
    now: datetime,
    rates: RateUsage | None = None,
    end_users: EndUsers | None = None,
) -> dict[str, Any]:
    now = now.astimezone(UTC)
    total = Counts()
    by_model: dict[str, Counts] = {}
    by_key: dict[str, Counts] = {}
    by_endpoint: dict[str, Counts] = {}
    for day in snap.days:
        total += day.total
        for model, c in day.by_model.items():
            by_model[model] = by_model.get(model, Counts()) + c
        for key_id, c in day.by_key.items():
            by_key[key_id] = by_key.get(key_id, Counts()) + c
        for endpoint, c in day.by_endpoint.items():
            by_endpoint[endpoint] = by_endpoint.get(endpoint, Counts()) + c

    def ranked(items: dict[str, Counts]) -> list[tuple[str, Counts]]:
        return sorted(items.items(), key=lambda kv: (-kv[1].credits, -kv[1].requests, kv[0]))

    s = snap.settings
    today = snap.days[-1]
    return {
        "object": "inference_dashboard",
        "account": account,
        "days": days,
        "start": snap.days[0].day,
        "end": today.day,
        "generated_at": iso(now),
        "daily": [{"date": d.day, **_counts(d.total)} for d in snap.days],
        "totals": _counts(total),
        "by_model": [{"model": m, **_counts(c)} for m, c in ranked(by_model)],
        "by_endpoint": [{"endpoint": e, **_counts(c)} for e, c in ranked(by_endpoint)],
        "by_end_user": end_user_rows(end_users),
        "end_users_more": end_users is not None and end_users.has_more,
        "by_key": [
            {
                "key_id": k,
                "name": keys[k].name if k in keys else None,
                "revoked": keys[k].revoked if k in keys else None,
                "limits": keys[k].controls.to_json() if k in keys else None,
                **_counts(c),
            }
            for k, c in ranked(by_key)
        ],
        "limits": {
            "enabled": s.enabled,
            "block_when_cap_reached": s.block_when_cap_reached,
            **account_limits(snap, rates or RateUsage(), now),
        },
        "key_limits": key_limit_legend(),
        "balance": balance_row(snap),
        "grants": [grant_row(g) for g in snap.grants],
    }


_GRANT_STATES = {"w": "waiting", "a": "active", "x": "expired"}


def grant_row(g: GrantView) -> dict[str, Any]:
    """One live grant as the dashboard shows it, in spend order: what is left, what requests in
    flight hold on it, and when it expires (null: never)."""

    def at(ms: int) -> str | None:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ms else None

    return {
        "id": g.grant_id,
        "category": g.category,
        "state": _GRANT_STATES.get(g.state, g.state),
        "remaining": format_credits(g.remaining),
        "held": format_credits(g.held),
        "priority": g.priority,
        "effective_at": at(g.effective_ms),
        "expires_at": at(g.expires_ms),
    }


def end_user_rows(found: EndUsers | None) -> list[dict[str, Any]]:
    rows = found.rows if found is not None else []
    ranked = sorted(rows, key=lambda r: (-r[1].credits, -r[1].requests, r[0]))
    return [{"end_user": u, **_counts(c)} for u, c in ranked]


def build_end_users(found: EndUsers, days: int, prefix: str, limit: int) -> dict[str, Any]:
    return {
        "object": "list",
        "days": days,
        "prefix": prefix,
        "limit": limit,
        "data": end_user_rows(found),
        "has_more": found.has_more,
    }


def build_activity(page: ActivityPage, limit: int) -> dict[str, Any]:
    data = [record for _, record in page.entries]
    return {
        "object": "list",
        "limit": limit,
        "data": data,
        "has_more": page.has_more,
        "next_cursor": encode_cursor(page.entries[-1][0]) if page.has_more and page.entries else None,
    }


# -- the page --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """The self-contained HTML page and its Content-Security-Policy: no external resources,
    only its own inline script and style (by hash), requests only to this origin."""
    html = resources.files("critique_sidecar.web").joinpath("static/inference-dashboard.html").read_text("utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode(), csp


# -- routes ----------------------------------------------------------------------------


def _json(data: dict[str, Any]) -> Response:
    return json_response(data)


def dashboard_routes(source: DashboardSource, identify: Identify, clock: Clock) -> list[Route]:
    async def dashboard(request: Request) -> Response:
        identity = await identify(request, DASHBOARD)
        q = request.query_params
        view = q.get("view", "summary")
        if view == "activity":
            limit = parse_limit(q.get("limit"))
            before = decode_cursor(q.get("cursor"))
            return _json(build_activity(await source.activity(identity.account, before, limit), limit))
        if view not in ("summary", "end_users"):
            raise _bad("view", "'view' must be 'summary' (the default), 'activity' or 'end_users'")
        days = parse_days(q.get("days"))
        now = clock()
        period = window_days(now, days)
        if view == "end_users":
            limit = parse_limit(q.get("limit"), TOP_END_USERS, MAX_END_USERS)
            prefix = parse_prefix(q.get("prefix"))
            found = await source.end_users(identity.account, period, limit, prefix)
            return _json(build_end_users(found, days, prefix, limit))
        snap = await source.snapshot(identity.account, period, month_window(now.astimezone(UTC)))
        key_ids = sorted({k for d in snap.days for k in d.by_key})
        keys = await source.keys(identity.account, key_ids) if key_ids else {}
        rates = await source.rates(identity.account, to_ms(now))
        top = await source.end_users(identity.account, period, TOP_END_USERS)
        return _json(build_summary(identity.account, snap, keys, days, now, rates, top))

    async def dashboard_page(request: Request) -> Response:
        body, csp = page()
        return Response(
            body,
            media_type="text/html; charset=utf-8",
            headers={
                "content-security-policy": csp,
                "cache-control": "no-cache",
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
            },
        )

    return [Route(DASHBOARD_PATH, dashboard, methods=["GET"]), Route(PAGE_PATH, dashboard_page, methods=["GET"])]
