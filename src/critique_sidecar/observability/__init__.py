"""Metrics and logs: the implementations of the core's observer (core/observe.py).

metrics.Metrics     Prometheus collectors (served at /metrics by envoy.server.serve)
logs.RequestLog     one structured line per settled or denied request
logs.configure_logging   the one logging setup (JSON or text)
Telemetry           both behind one Observer
"""

from __future__ import annotations

from ..core.ledger import UsageRecord
from ..core.observe import Denial, Observer
from .logs import RequestLog, configure_logging
from .metrics import Metrics

__all__ = ["Metrics", "RequestLog", "Telemetry", "configure_logging"]


class Telemetry:
    """Hands each core event to every observer in turn (metrics first, then the request log)."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def admitted(self, model: str, warnings: tuple[str, ...]) -> None:
        for o in self.observers:
            o.admitted(model, warnings)

    def denied(self, denial: Denial) -> None:
        for o in self.observers:
            o.denied(denial)

    def settled(self, record: UsageRecord) -> None:
        for o in self.observers:
            o.settled(record)

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        for o in self.observers:
            o.store_call(op, seconds, failed)

    def stream_opened(self) -> None:
        for o in self.observers:
            o.stream_opened()

    def stream_closed(self) -> None:
        for o in self.observers:
            o.stream_closed()

    def stream_chunk(self, model: str, first: bool, seconds: float, operation: str = "chat") -> None:
        for o in self.observers:
            o.stream_chunk(model, first, seconds, operation)
