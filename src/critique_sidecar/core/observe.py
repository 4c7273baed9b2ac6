"""What the core reports while it decides and meters: a tiny observer protocol.

The core calls an `Observer` at its decision points (exchange.py, metering.py) and around
each store round trip (`ObservedLedger`, `ObservedKeys`); the default does nothing. Metrics
and request logs implement it outside the core (critique_sidecar.observability), so the core
stays free of Prometheus, logging formats and transports.

Events carry ids, model ids, codes and numbers, never request or response text."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .errors import StoreUnavailable
from .keys import KeyDirectory, KeyRecord
from .ledger import HoldRequest, HoldResult, Ledger, SettleResult, UsageRecord

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Denial:
    """A chat request refused before it reached a model."""

    code: str  # the error-table code (errors.ERROR_TABLE)
    account: str | None  # known once the key was identified
    key_id: str | None
    model: str | None  # known once the body named a catalog model
    front_door_id: str | None  # the front door's request id (Envoy's x-request-id), if it sent one
    latency_s: float  # from the request's headers to the refusal


class Observer(Protocol):
    def admitted(self, model: str, warnings: tuple[str, ...]) -> None:
        """A hold was placed (warnings: soft-mode cap codes the request passed over)."""

    def denied(self, denial: Denial) -> None: ...

    def settled(self, record: UsageRecord) -> None:
        """An admitted request was closed (charged, estimated or released): once per request."""

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        """One store round trip: op is hold, settle or key_lookup; failed = store unavailable."""

    def stream_opened(self) -> None:
        """An SSE response started being metered."""

    def stream_closed(self) -> None: ...

    def stream_chunk(self, model: str, first: bool, seconds: float, operation: str = "chat") -> None:
        """A metered SSE chunk passed: first=True, seconds since admission (time to first
        token); else seconds since the previous chunk (the inter-chunk gap). `operation`: the
        endpoint's gen_ai.operation.name."""


class NullObserver:
    """The default: observes nothing."""

    def admitted(self, model: str, warnings: tuple[str, ...]) -> None:
        pass

    def denied(self, denial: Denial) -> None:
        pass

    def settled(self, record: UsageRecord) -> None:
        pass

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        pass

    def stream_opened(self) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    def stream_chunk(self, model: str, first: bool, seconds: float, operation: str = "chat") -> None:
        pass


NULL_OBSERVER = NullObserver()


# -- request tracing ------------------------------------------------------------------------
# Optional (OpenTelemetry, observability/tracing.py): with no tracer the exchange holds None
# and every hook is one `is None` test. One RequestTrace per chat request, in phase order:
# admitted or denied, response, settling, settled.


class RequestTrace(Protocol):
    def admitted(self, request_id: str, account: str, key_id: str, model: str, max_tokens: int, hold: int) -> None:
        """Admission ended with a hold; the upstream exchange begins."""

    def denied(self, code: str, account: str | None, key_id: str | None, model: str | None) -> None:
        """Admission refused: the request's trace ends here."""

    def response(self, status: int, stream: bool) -> None:
        """The upstream's response started."""

    def settling(self) -> None:
        """The upstream exchange ended; settlement begins."""

    def settled(self, record: UsageRecord, applied: bool) -> None:
        """Settlement ended: the request's trace ends here."""


class Tracer(Protocol):
    def begin(self, headers: Mapping[str, str], operation: str = "chat") -> RequestTrace:
        """A metered request arrived (headers: lower-case names; W3C traceparent read from them;
        `operation`: the endpoint's gen_ai.operation.name, e.g. chat, text_completion, embeddings)."""


async def _timed(observer: Observer, op: str, call: Awaitable[T]) -> T:
    """Await one store round trip and report its latency, and whether the store failed."""
    started = time.perf_counter()
    try:
        result = await call
    except StoreUnavailable:
        observer.store_call(op, time.perf_counter() - started, True)
        raise
    observer.store_call(op, time.perf_counter() - started, False)
    return result


class ObservedLedger:
    """A Ledger that reports each store round trip (latency, and whether the store failed)."""

    def __init__(self, inner: Ledger, observer: Observer) -> None:
        self._inner = inner
        self._observer = observer

    async def place_hold(self, hold: HoldRequest) -> HoldResult:
        return await _timed(self._observer, "hold", self._inner.place_hold(hold))

    async def settle(self, record: UsageRecord) -> SettleResult:
        return await _timed(self._observer, "settle", self._inner.settle(record))


class ObservedKeys:
    """A KeyDirectory that reports each key lookup that reaches the store."""

    def __init__(self, inner: KeyDirectory, observer: Observer) -> None:
        self._inner = inner
        self._observer = observer

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await _timed(self._observer, "key_lookup", self._inner.find_by_hash(key_hash))
