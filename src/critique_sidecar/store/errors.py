"""Turn Redis failures into the core's StoreUnavailable, in one place."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import RedisError

from ..core.cancellation import raise_if_cancelling
from ..core.errors import StoreUnavailable

__all__ = ["raise_if_cancelling", "store_call"]

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
