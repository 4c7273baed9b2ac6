"""What every operator command shares: the operator's error, the Redis connection, the audit
actor of a CLI change, and the provisioning service."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config


class CliError(Exception):
    """A one-line message for the operator; exit status 2."""


async def _with_redis(config: Config, fn: Callable[[Any], Awaitable[int]]) -> int:
    from ..app import connect_redis

    redis = connect_redis(config)
    try:
        return await fn(redis)
    finally:
        await redis.aclose()


def _cli_change() -> Any:
    """Who the audit trail names for a CLI change: the local operator."""
    import getpass
    import time

    from ..store.audit import Actor, Change

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Change(Actor("cli", user, "critique-sidecar CLI"), "cli_" + uuid.uuid4().hex[:16], int(time.time() * 1000))


def _provisioning(redis: Any) -> Any:
    from ..admin import provisioning

    return provisioning(Config(), redis)
