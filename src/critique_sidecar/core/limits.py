"""Per-minute rate limits as clients see them: the x-ratelimit-* headers (OpenAI's names and
formats), the refusals of rate limits and per-key controls, and which refusals are worth a retry.

The counting itself is one atomic step of the admission script (store/lua/place_hold.lua): a
sliding-window log per scope (the account, the key), exact at any concurrency; see
docs/rate-limits.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import wire
from .clock import window_end
from .errors import ApiError
from .key_controls import iso_ms
from .limit_table import REFUSALS, Limit, limit_id
from .money import format_credits

# Header names: core/wire.py.
LIMIT_REQUESTS = wire.LIMIT_REQUESTS_HEADER
REMAINING_REQUESTS = wire.REMAINING_REQUESTS_HEADER
RESET_REQUESTS = wire.RESET_REQUESTS_HEADER
LIMIT_TOKENS = wire.LIMIT_TOKENS_HEADER
REMAINING_TOKENS = wire.REMAINING_TOKENS_HEADER
RESET_TOKENS = wire.RESET_TOKENS_HEADER
RETRY_AFTER = wire.RETRY_AFTER_HEADER
SHOULD_RETRY = wire.SHOULD_RETRY_HEADER

# Refusals that will not lift within a retry's wait: the SDKs are told not to retry them (every
# cap of core/limit_table.py but the per-minute spend rates, which lift at the next UTC minute).
NO_RETRY = frozenset(
    {
        "inference_disabled",
        "insufficient_credits",
        "model_not_allowed",
        "upstream_auth_failed",
        *(code for code, row in REFUSALS.items() if row.retry != "next_minute"),
    }
)


@dataclass(frozen=True, slots=True)
class Window:
    """One per-minute limit as a client sees it: the limit, what is left, and when the oldest
    request in the window leaves it (so `remaining` grows)."""

    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class RateStatus:
    """The tightest requests and tokens limits that apply (account or key); None: no such limit."""

    requests: Window | None = None
    tokens: Window | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.requests is not None:
            out[LIMIT_REQUESTS] = str(self.requests.limit)
            out[REMAINING_REQUESTS] = str(self.requests.remaining)
            out[RESET_REQUESTS] = duration(self.requests.reset_ms)
        if self.tokens is not None:
            out[LIMIT_TOKENS] = str(self.tokens.limit)
            out[REMAINING_TOKENS] = str(self.tokens.remaining)
            out[RESET_TOKENS] = duration(self.tokens.reset_ms)
        return out


def rate_status(
    req_limit: int, req_left: int, req_reset: int, tok_limit: int, tok_left: int, tok_reset: int
) -> RateStatus | None:
    """From the admission script's numbers (a limit < 0: none applies)."""
    if req_limit < 0 and tok_limit < 0:
        return None
    return RateStatus(
        Window(req_limit, req_left, req_reset) if req_limit >= 0 else None,
        Window(tok_limit, tok_left, tok_reset) if tok_limit >= 0 else None,
    )


def duration(ms: int) -> str:
    """A duration as OpenAI (Go) writes it: 0s, 20ms, 1s, 1.5s, 6m0s, 1h2m3s."""
    ms = max(int(ms), 0)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    sec = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") if millis else str(seconds)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def retry_after_s(ms: int) -> str:
    return str(max(1, -(-int(ms) // 1000)))


_UNITS = {"requests_per_minute": "requests per minute", "tokens_per_minute": "tokens per minute"}
_WHOSE = {"account": "this account", "key": "this API key", "end_user": "this end user"}


def rate_refusal(control: str, retry_after_ms: int, tokens: int) -> ApiError:
    """429 rate_limit_exceeded naming the limit (`control` is scope:name:limit)."""
    scope, _, rest = control.partition(":")
    name, _, limit = rest.partition(":")
    whose = _WHOSE.get(scope, scope)
    if name == "max_concurrent":
        message = (
            f"Rate limit reached: {whose} allows {limit} concurrent requests (max_concurrent); "
            "retry when one of them finishes."
        )
    elif retry_after_ms < 0:  # more than the whole limit: waiting never helps
        return ApiError(
            "rate_limit_exceeded",
            f"This request may use up to {tokens} tokens (prompt bound + max_tokens), more than {whose}'s limit "
            f"of {limit} {_UNITS.get(name, name)}; lower max_tokens or shorten the prompt.",
            headers={SHOULD_RETRY: "false"},
        )
    else:
        message = (
            f"Rate limit reached: {whose} allows {limit} {_UNITS.get(name, name)} ({name}); "
            f"retry after {retry_after_s(retry_after_ms)} s."
        )
    return ApiError("rate_limit_exceeded", message, headers={RETRY_AFTER: retry_after_s(retry_after_ms)})


def key_expired(expires_at_ms: int) -> ApiError:
    return ApiError(
        "invalid_api_key",
        f"This API key expired at {iso_ms(expires_at_ms)}. Create a new key (or ask the operator to extend it).",
    )


_LIFTS = {
    "month": "resets on the 1st, UTC",
    "day": "resets at 00:00 UTC",
    "hour": "resets at the next full hour, UTC",
    "minute": "resets at the next full minute",
}


def cap_message(row: Limit, limit: str = "") -> str:
    """A cap's refusal, from its row: what, whose, and when it lifts (`limit`: its value, as the
    script names it, for the spend rates)."""
    whose = _WHOSE["end_user" if row.each == "end_user" else row.scope]
    lifts = _LIFTS[row.window]
    if row.window in ("minute", "hour"):
        of = f" of {format_credits(int(limit))} credits" if limit.isdigit() else ""
        return f"Spend rate limit{of} per {row.window} reached for {whose} ({row.name}, held credits included; {lifts})"
    what = "inference credit cap" if row.credits else "request cap"
    return f"{'Monthly' if row.window == 'month' else 'Daily'} {what} reached for {whose} ({lifts})"


def limit_named(code: str, control: str, funds: dict[str, int]) -> str | None:
    """The limit behind a 402/429, as `<scope>:<limit>` (error.param and X-Critique-Limit)."""
    if code == "rate_limit_exceeded":
        scope, _, rest = control.partition(":")
        return f"{scope}:{rest.partition(':')[0]}" if rest else None
    row = REFUSALS.get(code)
    if row is not None:
        return limit_id(row)
    if code == "insufficient_credits":
        return "account:reserve_floor" if funds.get("floor", 0) > 0 else "account:balance"
    return None


def control_refusal(code: str, control: str, now: datetime) -> ApiError | None:
    """The refusals of the per-key controls and of the caps (None for other codes)."""
    if code == "key_expired":
        return key_expired(int(control))
    if code == "model_not_allowed":
        return ApiError(
            "model_not_allowed",
            f"This API key may not use the model '{control}'; ask the operator to add it to the key's models.",
            param="model",
        )
    row = REFUSALS.get(code)
    if row is not None:
        return ApiError(code, cap_message(row, control), headers=retry_headers(code, now))
    return None


def retry_headers(code: str, now: datetime) -> dict[str, str]:
    """Retry-After for the caps (the end of their UTC window), and x-should-retry: false for every
    refusal that will not lift soon (so the SDKs' automatic retries do not hammer a closed door)."""
    out: dict[str, str] = {}
    row = REFUSALS.get(code)
    if row is not None:
        out[RETRY_AFTER] = str(max(1, int((window_end(row.window, now) - now).total_seconds() + 0.999)))
    if code in NO_RETRY:
        out[SHOULD_RETRY] = "false"
    return out
