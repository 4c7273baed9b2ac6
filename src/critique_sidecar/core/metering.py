"""The metering use cases every front door calls: admit (hold) and settle (charge).

admit:  MeteredBody (an endpoint's parse) -> max cost at the start-time price -> atomic hold
settle: usage (or an estimate) -> exact USD -> micro-credits -> atomic, idempotent charge
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from .auth import Identity
from .capture import CaptureRecord, CaptureSink
from .catalog import Catalog, Price, price_for
from .clock import Clock, day_window, month_window, to_ms, utc_now
from .endpoints.base import Endpoint, Limits, MeteredBody
from .errors import ApiError
from .ledger import HoldRequest, HoldResult, Ledger, SettleResult, UsageRecord
from .limits import RateStatus, control_refusal, limit_named, rate_refusal, retry_headers
from .money import format_credits, usd_for_counts, usd_to_micro_credits
from .observe import NULL_OBSERVER, Observer, RequestTrace, Tracer
from .settlement import NOTHING, Charge, Delivered, settlement_charge
from .tokens import TokenCounts
from .wire import LIMIT_HEADER, SDK_REQUEST_ID_HEADER

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MeteredRequest:
    """An admitted request: its hold is open until `Meter.settle` closes it."""

    request_id: str
    identity: Identity
    body: MeteredBody
    price: Price  # the normal price at the start time: what the hold is sized at
    hold: int
    started_at: datetime
    started_mono: float
    warnings: tuple[str, ...]
    settled: SettleResult | None = field(default=None)
    opt_in: bool = False  # opted in (header or account) on a model with an opt-in tier
    rate: RateStatus | None = field(default=None)  # the x-ratelimit-* state at admission
    trace: RequestTrace | None = field(default=None)  # the request's trace, if tracing is on
    endpoint: str = ""  # the endpoint's name (core/endpoints/)

    @property
    def model(self) -> str:
        return self.body.model.id


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


_CAP_MESSAGES = {
    "daily_request_cap_reached": "Daily request cap reached for this account (resets at 00:00 UTC)",
    "daily_credit_cap_reached": "Daily inference credit cap reached for this account (resets at 00:00 UTC)",
    "monthly_credit_cap_reached": "Monthly inference credit cap reached for this account (resets on the 1st, UTC)",
    "inference_disabled": "The Inference API is disabled for this account (Settings -> Connections)",
}


def hold_refusal(result: HoldResult, hold: int, now: datetime, tokens: int = 0) -> ApiError:
    """The client-facing error for a refused hold, with the retry and x-ratelimit-* headers."""
    error = _hold_refusal(result, hold, now, tokens)
    # every refusal says whether to retry, and shows the per-minute limits
    extra = retry_headers(error.code, now)
    if result.rate is not None:
        extra.update(result.rate.headers())
    named = limit_named(error.code, result.control, result.funds)
    if named is not None:  # which limit refused, for code as well as people
        error.param = named
        extra[LIMIT_HEADER] = named
    error.headers = {**extra, **error.headers}
    return error


def _hold_refusal(result: HoldResult, hold: int, now: datetime, tokens: int) -> ApiError:
    code = result.code or "service_unavailable"
    if code == "rate_limit_exceeded":
        return rate_refusal(result.control, result.retry_after_ms, tokens)
    refused = control_refusal(code, result.control, now)
    if refused is not None:
        return refused
    if code == "insufficient_credits":
        d = result.funds
        available = d.get("balance", 0) - d.get("floor", 0) - d.get("held", 0)
        reason = (
            f"the reserve floor of {format_credits(d['floor'])} credits is kept for review"
            if d.get("floor", 0) > 0 and d.get("balance", 0) - d.get("held", 0) >= hold
            else "the balance is too low"
        )
        return ApiError(
            "insufficient_credits",
            f"Insufficient credits: this request may cost up to {format_credits(hold)} credits but only "
            f"{format_credits(max(available, 0))} are available ({reason}).",
        )
    return ApiError(code, _CAP_MESSAGES.get(code, code))


class Meter:
    def __init__(
        self,
        catalog: Catalog,
        ledger: Ledger,
        usd_per_credit: Decimal,
        hold_ttl_s: int = 900,
        clock: Clock = utc_now,
        capture: CaptureSink | None = None,
        capture_timeout_s: float = 0.25,
        observer: Observer = NULL_OBSERVER,
        max_n: int = 8,
        tracer: Tracer | None = None,
    ) -> None:
        self.catalog = catalog
        self.observer = observer  # metrics and request logs (core/observe.py); the exchange reports through it too
        self._ledger = ledger
        self._usd_per_credit = usd_per_credit
        self._hold_ttl = timedelta(seconds=hold_ttl_s)
        self._clock = clock
        self._capture = capture
        self._capture_timeout = capture_timeout_s
        self.limits = Limits(catalog, max_n)
        self.tracer = tracer  # OpenTelemetry spans when on (observability/tracing.py); None costs nothing

    def parse(self, endpoint: Endpoint, raw: bytes) -> MeteredBody:
        """An endpoint's request body as the meter sees it (its hold's bounds)."""
        return endpoint.parse(raw, self.limits)

    async def admit(
        self,
        identity: Identity,
        body: MeteredBody,
        opt_in_header: bool,
        endpoint: str = "chat.completions",
        request_id: str | None = None,
    ) -> MeteredRequest:
        """Reserve the request's maximum cost at the normal price: the opt-in discount is only
        given at settlement, once the capture is written (settle_completed)."""
        now = self._clock()
        hold_price = price_for(self.catalog, body.model, now, opt_in=False)
        bound = self.bounds(body)
        hold = self.hold_for(bound, hold_price)
        tokens = bound.input_tokens + bound.output_tokens  # counted against tokens-per-minute limits
        request_id = request_id or new_request_id()
        result = await self._ledger.place_hold(
            HoldRequest(
                account=identity.account,
                request_id=request_id,
                amount=hold,
                now_ms=to_ms(now),
                expires_ms=to_ms(now + self._hold_ttl),
                day=day_window(now),
                month=month_window(now),
                key_id=identity.key_id,
                model=body.model.id,
                tokens=tokens,
                end_user=body.end_user,
            )
        )
        if result.code is not None:
            refusal = hold_refusal(result, hold, now, tokens)
            refusal.headers[SDK_REQUEST_ID_HEADER] = request_id
            raise refusal
        opt_in = (opt_in_header or result.training_opt_in) and body.model.training_opt_in is not None
        self.observer.admitted(body.model.id, result.warnings)
        metered = MeteredRequest(
            request_id, identity, body, hold_price, hold, now, time.monotonic(), result.warnings, opt_in=opt_in
        )
        metered.rate = result.rate
        metered.endpoint = endpoint
        return metered

    @staticmethod
    def bounds(body: MeteredBody) -> TokenCounts:
        """The most a request can use: what its hold reserves and its settlement charges at most."""
        return TokenCounts(body.input_bound, body.output_bound)

    def credits_for(self, usage: TokenCounts, price: Price) -> int:
        return usd_to_micro_credits(usd_for_counts(usage, price), self._usd_per_credit)

    def hold_for(self, bound: TokenCounts, price: Price) -> int:
        """The hold: the input bound at the highest input price that can apply (a cache write may
        cost more than plain input), the output bound at the output price."""
        usd = (bound.input_tokens * price.highest_input + bound.output_tokens * price.output) / 1_000_000
        return usd_to_micro_credits(usd, self._usd_per_credit)

    def charge(
        self,
        req: MeteredRequest,
        usage: TokenCounts | None,
        delivered: Delivered = NOTHING,
        price: Price | None = None,
        final: bool = True,
    ) -> Charge:
        """The settlement rule (core/settlement.py): reported usage, or the estimate (input from
        the body, output from what was delivered), bounded by the hold. `final`: the usage is the
        response's own complete count (False: a stream that ended without it)."""
        estimate = TokenCounts(req.body.input_estimate, delivered.output_tokens())
        return settlement_charge(
            usage, estimate, self.bounds(req.body), price or req.price, self._usd_per_credit, req.hold, final
        )

    async def settle(self, req: MeteredRequest, charge: Charge | None, status: str) -> SettleResult:
        """Close the hold: charge `charge` (None = release, charge nothing). Idempotent by
        request id, so a repeated or replayed settlement never charges twice."""
        if req.settled is not None:
            return req.settled
        at = req.started_at
        usage = charge.usage if charge else TokenCounts(0, 0)
        price = charge.price if charge else req.price
        if charge and charge.overage:
            log.warning(
                "usage of %s (model %s) exceeded its hold: charged %d, overage %d micro-credits not charged",
                req.request_id,
                req.model,
                charge.credits,
                charge.overage,
            )
        record = UsageRecord(
            request_id=req.request_id,
            account=req.identity.account,
            key_id=req.identity.key_id,
            model=req.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            endpoint=req.endpoint,
            end_user=req.body.end_user,
            credits=charge.credits if charge else 0,
            usd=format(charge.usd, "f") if charge else "0",
            price_version=price.version,
            opt_in=price.opt_in,
            estimated=bool(charge and charge.estimated),
            status=status,
            latency_ms=int((time.monotonic() - req.started_mono) * 1000),
            ts_ms=to_ms(self._clock()),
            day=day_window(at),
            month=month_window(at),
            overage=charge.overage if charge else 0,
        )
        trace = req.trace
        if trace is not None:
            trace.settling()
        req.settled = await self._ledger.settle(record)
        self.observer.settled(record)
        if trace is not None:
            trace.settled(record, req.settled.applied)
        return req.settled

    async def settle_completed(
        self,
        req: MeteredRequest,
        usage: TokenCounts | None,
        delivered: Delivered,
        completion: Callable[[], str | None],
        final: bool = True,
    ) -> tuple[SettleResult, Charge]:
        """Settle a response that completed. An opted-in request gets the opt-in price only if
        it reported its final usage and its capture is written (core/capture.py); otherwise,
        and for cut or failed requests (which never come here), the normal price."""
        charge = self.charge(req, usage, delivered, final=final)
        if req.opt_in and req.settled is None and usage is not None and final:
            opt_price = price_for(self.catalog, req.body.model, req.started_at, opt_in=True)
            discounted = self.charge(req, usage, delivered, opt_price)
            text = completion()
            if text is not None and await self._write_capture(req, discounted, text):
                charge = discounted
        result = await self.settle(req, charge, "estimated" if charge.estimated else "ok")
        return result, charge

    async def _write_capture(self, req: MeteredRequest, charge: Charge, text: str) -> bool:
        if self._capture is None:
            return False
        record = CaptureRecord(
            request_id=req.request_id,
            account=req.identity.account,
            key_id=req.identity.key_id,
            model=req.model,
            ts_ms=to_ms(self._clock()),
            messages=req.body.capture_input,
            completion=text,
            input_tokens=charge.usage.input_tokens,
            output_tokens=charge.usage.output_tokens,
            credits=charge.credits,
            usd=format(charge.usd, "f"),
            price_version=charge.price.version,
        )
        try:
            await asyncio.wait_for(self._capture.write(record), self._capture_timeout)
            return True
        except Exception as exc:
            log.warning("capture failed for %s (%s): charged at the normal price", req.request_id, type(exc).__name__)
            return False
