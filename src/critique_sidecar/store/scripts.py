"""Load the Lua scripts once and register them with redis-py (EVALSHA, reloaded on NOSCRIPT).

A script's source is its file with each `--#include NAME` line replaced by lua/lib/NAME.lua,
and for the ledger scripts the generated prelude of store/lua_contract.py in front."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from .lua_contract import CONTRACTS, prelude

_INCLUDE = re.compile(r"^--#include ([a-z_]+)$", re.M)


def _read(path: str) -> str:
    return resources.files("critique_sidecar.store").joinpath(f"lua/{path}.lua").read_text("utf-8")


@cache
def lua_source(name: str) -> str:
    body = _INCLUDE.sub(lambda m: _read(f"lib/{m.group(1)}").rstrip("\n"), _read(name))
    return prelude(name) + body if name in CONTRACTS else body


def register(redis: Any, name: str) -> Any:
    return redis.register_script(lua_source(name))
