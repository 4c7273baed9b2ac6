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


def raise_if_cancelling(error: BaseException) -> None:
    """For loops that log an error and try again: if this task has been asked to stop, stop.
    A library can turn the cancellation it received into an error of its own (a timeout that
    expired at the same moment): retried, the stop request would be lost and the loop would
    outlive its shutdown (seen: usage retention under load)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
