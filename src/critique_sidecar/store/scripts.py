"""Load the Lua scripts once and register them with redis-py (EVALSHA, reloaded on NOSCRIPT)."""

from __future__ import annotations

from importlib import resources
from typing import Any


def lua_source(name: str) -> str:
    return resources.files("critique_sidecar.store").joinpath(f"lua/{name}.lua").read_text("utf-8")


def register(redis: Any, name: str) -> Any:
    return redis.register_script(lua_source(name))
