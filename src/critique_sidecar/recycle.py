"""Recycling: a sidecar process that has served enough requests, or grown too large, drains
and exits for its supervisor to start a fresh one.

A safety net, not a fix: grpc.aio leaks a little native memory per ext_proc stream that
Envoy resets (docs/operations.md, "Memory"), which only a new process gives back. The drain
is hitless when sibling processes sit behind Envoy: health turns NOT_SERVING, Envoy's health
checks move new streams to the siblings, and only then does the process stop taking streams
and let the open ones finish (app.serve's shutdown, as on SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

# The RPCs that are requests (health checks are not).
_COUNTED = ("/envoy.service.ext_proc.", "/envoy.service.auth.")
_PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_CHECK_S = 5.0
QUIET_S = 1.0  # after the drain delay, wait until no new stream has started for this long
MAX_DRAIN_WAIT_S = 30.0  # ... but no longer (a lone process behind Envoy keeps getting streams)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e6


class Recycler(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts requests as a gRPC server interceptor and says when the process is due."""

    def __init__(self, after_requests: int, above_rss_mb: int, drain_s: float, jitter: float = 0.1) -> None:
        self.limit = int(after_requests * (1 - jitter * random.random())) if after_requests else 0
        self.above_rss_mb = above_rss_mb
        self.drain_s = drain_s
        self.requests = 0
        self.last_stream = time.monotonic()
        self.due = asyncio.Event()
        self.reason = ""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        if details.method.startswith(_COUNTED):
            self.requests += 1
            self.last_stream = time.monotonic()
            if self.limit and self.requests >= self.limit:
                self._due(f"{self.requests} requests served")
        return await continuation(details)

    def _due(self, reason: str) -> None:
        if not self.due.is_set():
            self.reason = reason
            self.due.set()

    async def _watch_memory(self) -> None:
        while self.above_rss_mb:
            mb = rss_mb()
            if mb > self.above_rss_mb:
                self._due(f"resident memory {mb:.0f} MB over {self.above_rss_mb} MB")
                return
            await asyncio.sleep(RSS_CHECK_S)

    async def run(self, not_serving: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """When due: NOT_SERVING, wait for Envoy to move new streams elsewhere, then `stop`."""
        watcher = asyncio.create_task(self._watch_memory())
        try:
            await self.due.wait()
        finally:
            watcher.cancel()
        log.warning("recycling: %s; draining, then exiting for the supervisor to restart", self.reason)
        await not_serving()
        await asyncio.sleep(self.drain_s)
        for _ in range(int(MAX_DRAIN_WAIT_S / QUIET_S)):
            quiet_for = time.monotonic() - self.last_stream
            if quiet_for >= QUIET_S:
                break
            await asyncio.sleep(QUIET_S - quiet_for)
        stop.set()


def recycler(after_requests: int, above_rss_mb: int, drain_s: float) -> Recycler | None:
    if not (after_requests or above_rss_mb):
        return None
    return Recycler(after_requests, above_rss_mb, drain_s)
