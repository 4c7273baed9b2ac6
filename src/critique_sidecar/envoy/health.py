"""gRPC health: SERVING only while the store answers, NOT_SERVING while draining."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2

from ..store.errors import raise_if_cancelling

log = logging.getLogger(__name__)

SERVICES = ("", "envoy.service.auth.v3.Authorization", "envoy.service.ext_proc.v3.ExternalProcessor")


class StoreHealth:
    """Polls `ping` and mirrors the result into the standard health servicer."""

    def __init__(
        self, servicer: health.aio.HealthServicer, ping: Callable[[], Awaitable[object]], interval_s: float = 1.0
    ) -> None:
        self.servicer = servicer
        self._ping = ping
        self._interval = interval_s
        self._draining = False
        self.serving = False
        self._logged: bool | None = None  # the state last logged; None before the first check

    async def check_once(self) -> bool:
        try:
            await asyncio.wait_for(self._ping(), timeout=self._interval)
            ok = not self._draining
        except Exception as exc:
            if self._logged is not False:
                log.warning("store unreachable, health NOT_SERVING: %s", type(exc).__name__)
                self._logged = False
            ok = False
        if ok and self._logged is not True:
            log.info("store reachable, health SERVING" if self._logged is None else "store recovered, health SERVING")
            self._logged = True
        await self._set(ok)
        return ok

    async def run(self) -> None:
        while True:
            raise_if_cancelling()  # a ping may swallow the cancellation (store/errors.py)
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def drain(self) -> None:
        self._draining = True
        log.info("draining, health NOT_SERVING")
        await self._set(False)

    async def _set(self, ok: bool) -> None:
        self.serving = ok
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in SERVICES:
            await self.servicer.set(name, status)
