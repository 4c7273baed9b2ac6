"""Turn Redis failures into the core's StoreUnavailable, in one place."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import RedisError

from ..core.errors import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")


def store_call(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Still a coroutine function to the checker, so the stores satisfy the core's async Protocols."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    return wrapper


def raise_if_cancelling(error: BaseException | None = None) -> None:
    """For loops that run until cancelled: if this task has been asked to stop, stop. Called in
    each round and where a loop logs an error and tries again: redis-py can swallow the
    cancellation it receives (a command that still completes) or turn it into an error of its
    own, and the stop request would be lost; the loop would outlive its shutdown (seen: usage
    retention, whose round walks every account, hung the shutdown of a test)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
