"""The provisioning API's own log line and metrics per request (ASGI middleware).

One INFO line per request (logger critique_sidecar.provisioning): method, route template,
status, latency and the request id the response carries (the audit trail's id for a change).
Metrics: requests by method, route and status, and their latency. Route templates
(`/v1/accounts/{account}/credits`), never an account or a token: labels stay bounded."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("critique_sidecar.provisioning")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "critique_admin_requests",
            "Provisioning API requests, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "critique_admin_request_seconds",
            "Provisioning API request latency, by method and route template.",
            ["method", "route"],
            registry=registry,
            buckets=BUCKETS,
        )


class Observed:
    def __init__(self, app: Any, metrics: AdminMetrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "request_id": None}

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-request-id":
                        seen["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - began
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method, status = scope["method"], seen["status"]
            if self.metrics is not None:
                self.metrics.requests.labels(method, route, str(status)).inc()
                self.metrics.seconds.labels(method, route).observe(seconds)
            fields = {
                "event": "admin_request",
                "method": method,
                "route": route,
                "status": status,
                "request_id": seen["request_id"],
                "latency_ms": round(seconds * 1000, 3),
            }
            log.info("provisioning request", extra={"fields": fields})
