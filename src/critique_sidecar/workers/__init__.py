"""Background workers beside the request path (never on it): budget-notification delivery
(notify.py) and the CloudEvents usage push (usage_push.py). Each runs in the sidecar process
when configured (CRITIQUE_NOTIFY_WORKER, CRITIQUE_USAGE_PUSH_WORKER), or alone as a CLI command
(`critique-sidecar notify-worker`, `critique-sidecar usage push`)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from ..config import Config


def background_workers(config: Config, redis: Any) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """(name, coroutine) of each worker the configuration turns on, for the process lifecycle
    (lifecycle.py) to run as tasks and cancel at shutdown."""
    work: list[tuple[str, Coroutine[Any, Any, None]]] = []
    if config.notify_worker:
        from .notify import NotifyWorker

        # redis-py's cluster client has no pub/sub: there, only the periodic sweep finds events
        work.append(("notify-worker", NotifyWorker(redis, config).run_forever(wake_channel=not config.redis_cluster)))
    if config.usage_push_worker:
        from .usage_push import UsagePushWorker

        work.append(("usage-push", UsagePushWorker(redis, config).run_forever()))
    return work
