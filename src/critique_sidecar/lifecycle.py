"""The background work of a serving process, owned in one place for both front doors
(`envoy.server.serve` and the ASGI `Gateway`).

    start()          replay a journal left by an earlier run, then keep running:
                       journal replay (settlements written while Redis was unreachable)
                       the revocation feed (drops revoked keys from this process's cache)
                       usage retention (trims old usage records; Config.usage_trim_interval_s)
                       webhook delivery and the usage push, when configured (workers/)
                       the provisioning API on its own listener, when Config.admin_listen is set
    stop(*drains)    the front door's drain steps, in order (stop taking requests, let open ones
                     finish and settle); then the background work stops, the journal is flushed
                     once more (what cannot reach Redis stays for the next start) and the
                     connections close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .admin import admin_server
from .app import Components
from .config import Config
from .observability.backlogs import sample_backlogs
from .store.key_store import watch_revocations
from .store.usage_retention import UsageRetention

log = logging.getLogger(__name__)

Drain = Callable[[], Awaitable[object]]


class Lifecycle:
    def __init__(self, config: Config, components: Components) -> None:
        self.config = config
        self.components = components
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stopped = False
        self._admin: Any = None  # admin.py's uvicorn server, when it runs

    def _run(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self.tasks[name] = asyncio.create_task(work, name=name)

    async def start(self) -> None:
        c, config = self.components, self.config
        await c.ledger.replay()  # a journal left by an earlier run (e.g. killed during an outage)
        self._run("journal-replay", c.ledger.replay_forever())
        if not config.redis_cluster:  # redis-py's cluster client has no pub/sub: the cache TTL bounds revocation
            self._run("revocation-feed", watch_revocations(c.redis, c.auth.forget))
        if config.usage_trim_interval_s > 0:
            retention = UsageRetention(c.redis, config.usage_retention_days, warn_length=config.usage_stream_maxlen)
            self._run("usage-retention", retention.run_forever(config.usage_trim_interval_s))
        # budget-notification delivery and the usage push, when configured
        from .app import background_workers

        for name, work in background_workers(config, c.redis):
            self._run(name, work)
        self._run("backlog-gauges", sample_backlogs(c.redis, c.metrics, config))
        self._admin = admin_server(config, c.redis, c.metrics.registry)
        if self._admin is not None:
            self._run("admin-listener", self._admin.serve())

    async def stop(self, *drains: Drain) -> None:
        """Idempotent: a second call (a second signal, a lifespan after a crash) does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for drain in drains:
            try:
                await drain()
            except Exception:
                log.exception("a drain step failed; shutting down anyway")
        if self._admin is not None:  # the provisioning API closes after the front door's drains
            self._admin.should_exit = True
            await asyncio.gather(self.tasks["admin-listener"], return_exceptions=True)
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.components.ledger.replay()  # flush what can be flushed
        await self.components.aclose()
