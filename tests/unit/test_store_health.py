"""StoreHealth logs the store's state once at startup and once per change, recovery included,
and mirrors it into the gRPC health service."""

from __future__ import annotations

import logging

import pytest
from grpc_health.v1 import health, health_pb2

from critique_sidecar.envoy.health import StoreHealth


async def test_store_state_is_logged_at_startup_and_at_every_change(caplog: pytest.LogCaptureFixture) -> None:
    up = {"now": False}

    async def ping() -> bool:
        if not up["now"]:
            raise ConnectionError("refused")
        return True

    servicer = health.aio.HealthServicer()
    store = StoreHealth(servicer, ping, interval_s=0.5)
    caplog.set_level(logging.INFO, logger="critique_sidecar.envoy.health")
    for state in (False, False, True, True, False, True):
        up["now"] = state
        assert await store.check_once() is state
    await store.drain()
    assert [r.getMessage() for r in caplog.records] == [
        "store unreachable, health NOT_SERVING: ConnectionError",
        "store recovered, health SERVING",
        "store unreachable, health NOT_SERVING: ConnectionError",
        "store recovered, health SERVING",
        "draining, health NOT_SERVING",
    ]
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_store_reachable_at_startup_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def ping() -> bool:
        return True

    caplog.set_level(logging.INFO, logger="critique_sidecar.envoy.health")
    store = StoreHealth(health.aio.HealthServicer(), ping)
    await store.check_once()
    await store.check_once()
    assert [r.getMessage() for r in caplog.records] == ["store reachable, health SERVING"]
