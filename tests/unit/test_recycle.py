"""Recycler (recycle.py): what counts as a request, the jittered limit, the memory limit, and
the order of a recycle: NOT_SERVING first, `stop` only after the drain wait."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from critique_sidecar import recycle
from critique_sidecar.recycle import Recycler


class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _call(r: Recycler, method: str) -> None:
    async def continuation(details: Any) -> str:
        return "handler"

    assert await r.intercept_service(continuation, Details(method)) == "handler"


def test_the_limit_is_jittered_down_by_at_most_a_tenth() -> None:
    limits = {Recycler(1000, 0, 0).limit for _ in range(200)}
    assert min(limits) >= 900 and max(limits) <= 1000 and len(limits) > 1
    assert recycle.recycler(0, 0, 3.0) is None  # off by default


async def test_requests_count_health_checks_do_not() -> None:
    r = Recycler(3, 0, 0, jitter=0)
    for _ in range(5):
        await _call(r, "/grpc.health.v1.Health/Check")
    await _call(r, "/envoy.service.ext_proc.v3.ExternalProcessor/Process")
    await _call(r, "/envoy.service.auth.v3.Authorization/Check")
    assert r.requests == 2 and not r.due.is_set()
    await _call(r, "/envoy.service.ext_proc.v3.ExternalProcessor/Process")
    assert r.due.is_set() and r.reason == "3 requests served"


async def test_not_serving_comes_first_and_stop_only_after_the_drain_wait() -> None:
    r = Recycler(1, 0, drain_s=0.3, jitter=0)
    events: list[tuple[str, float]] = []
    stop = asyncio.Event()

    async def not_serving() -> None:
        events.append(("not_serving", time.monotonic()))

    task = asyncio.create_task(r.run(not_serving, stop))
    await _call(r, "/envoy.service.ext_proc.v3.ExternalProcessor/Process")
    await asyncio.wait_for(stop.wait(), 5)
    events.append(("stop", time.monotonic()))
    await task
    assert [e for e, _ in events] == ["not_serving", "stop"]
    assert events[1][1] - events[0][1] >= 0.3


async def test_resident_memory_over_the_limit_recycles() -> None:
    r = Recycler(0, above_rss_mb=1, drain_s=0, jitter=0)  # any Python process is over 1 MB
    stop = asyncio.Event()
    calls: list[str] = []

    async def not_serving() -> None:
        calls.append("not_serving")

    await asyncio.wait_for(r.run(not_serving, stop), 5)
    assert stop.is_set() and calls == ["not_serving"] and r.reason.startswith("resident memory")
