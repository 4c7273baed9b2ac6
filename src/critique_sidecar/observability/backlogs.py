"""Gauges of what waits in Redis for a worker, sampled every BACKLOG_INTERVAL_S: the budget
notifications' dead letters, and (when usage push is configured) the records it has not had
acknowledged. Any sidecar or gateway process exports them; each reads the shared Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from ..config import Config
from ..store.backlogs import dead_letters, push_backlog
from ..store.errors import raise_if_cancelling

log = logging.getLogger(__name__)
BACKLOG_INTERVAL_S = 15.0


async def sample_once(redis: Any, metrics: Any, config: Config) -> None:
    metrics.notify_dead_letters.set(await dead_letters(redis))
    if config.usage_push_url:
        metrics.usage_push_backlog.set(await push_backlog(redis, config.usage_push_group))


async def sample_backlogs(redis: Any, metrics: Any, config: Config, interval_s: float = BACKLOG_INTERVAL_S) -> None:
    while True:
        raise_if_cancelling()
        try:
            await sample_once(redis, metrics, config)
        except (RedisError, OSError) as exc:  # the store's outage is reported elsewhere; keep the last values
            raise_if_cancelling(exc)
            log.debug("backlog gauges not sampled (%s)", type(exc).__name__)
        await asyncio.sleep(interval_s)
