"""The Redis ledger: admission and settlement as one Lua script each (one round trip)."""

from __future__ import annotations

from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..core.ledger import HoldRequest, HoldResult, SettlementRejected, SettleResult, UsageRecord
from ..core.limits import rate_status
from . import keyspace as ks
from .batcher import CommandBatcher, Script
from .errors import store_call
from .scripts import lua_source, register
from .usage_records import register_account

# Day/month windows outlive the longest dashboard view (90 days).
WINDOW_TTL_S = 100 * 86400


def _limit_keys(a: str, key_id: str) -> tuple[str, str, str, str]:
    """The limiter keys both scripts take, in this order (place_hold.lua KEYS[8..11], settle.lua
    KEYS[8..11])."""
    return ks.limiter(a), ks.hold_info(a), ks.minute_window(a), ks.minute_window(a, key_id)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLedger:
    def __init__(self, redis: Any, settled_ttl_s: int = 7 * 86400, autopipeline: bool = False) -> None:
        self._redis = redis
        self._settled_ttl = settled_ttl_s
        self._batcher: CommandBatcher | None = None
        if autopipeline:  # one dedicated connection, concurrent scripts share writes (store/batcher.py)
            self._batcher = CommandBatcher(redis)
            self._place_hold = Script(self._batcher, lua_source("place_hold"))
            self._settle = Script(self._batcher, lua_source("settle"))
        else:
            self._place_hold = register(redis, "place_hold")
            self._settle = register(redis, "settle")
        self._registered: set[str] = set()  # accounts this process has put in the usage registry

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()

    @store_call
    async def place_hold(self, hold: HoldRequest) -> HoldResult:
        a = hold.account
        keys = [
            ks.account(a),
            ks.settings(a),
            ks.holds(a),
            ks.hold_expiry(a),
            ks.day(a, hold.day),
            ks.month(a, hold.month),
            # >>> limits
            ks.key_controls(a, hold.key_id),
            *_limit_keys(a, hold.key_id),
            # <<< limits
        ]
        args = [hold.request_id, hold.amount, hold.now_ms, hold.expires_ms, WINDOW_TTL_S]
        args += [hold.key_id, hold.model, hold.tokens]
        r = await self._place_hold(keys=keys, args=args)
        code = _s(r[0])
        warnings_s = _s(r[1])
        return HoldResult(
            code=None if code == "ok" else code,
            warnings=tuple(w for w in warnings_s.split(",") if w),
            training_opt_in=bool(int(r[2])),
            detail={"balance": int(r[3]), "floor": int(r[4]), "held": int(r[5])},
            control=_s(r[6]),
            retry_after_ms=int(r[7]),
            rate=rate_status(*(int(v) for v in r[8:14])),
        )

    @store_call
    async def settle(self, record: UsageRecord) -> SettleResult:
        a = record.account
        if a not in self._registered:  # once per account and process: how consumers find streams
            await register_account(self._redis, a)
            self._registered.add(a)
        keys = [
            ks.account(a),
            ks.holds(a),
            ks.hold_expiry(a),
            ks.day(a, record.day),
            ks.month(a, record.month),
            ks.settled(a, record.request_id),
            ks.usage_stream(a),
            # >>> limits
            *_limit_keys(a, record.key_id),
            # <<< limits
            ks.settings(a),  # observe: notification thresholds
            ks.notify_outbox(a),
        ]
        fields = orjson.dumps([str(v) for v in record_fields(record)])
        args = [record.request_id, record.credits, WINDOW_TTL_S, self._settled_ttl, fields]
        args += [record.model, record.key_id, record.input_tokens, record.output_tokens]
        args += [record.day, record.month, record.ts_ms]  # observe: notification windows
        try:
            applied, charged = await self._settle(keys=keys, args=args)
        except ResponseError as exc:
            if is_rejection(exc):
                raise SettlementRejected(str(exc)[:200]) from exc
            raise  # store_call: the store is unavailable (read-only replica, loading, OOM, ...)
        return SettleResult(credits=int(charged), applied=bool(int(applied)))


# Error replies that mean "not now" (failover, loading, memory, cluster moves): the store is
# unavailable and the settlement is journaled and retried. Every other error reply to the
# settlement script (its own validation, WRONGTYPE, a Lua runtime error) is a rejection.
_TRANSIENT_REPLIES = (
    "READONLY", "LOADING", "BUSY", "OOM", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK",
    "NOREPLICAS", "MISCONF", "NOSCRIPT",
)  # fmt: skip


def is_rejection(exc: ResponseError) -> bool:
    # redis-py strips the code from the message of the replies it has a class for (READONLY
    # becomes ReadOnlyError("You can't write ...")): the code is in status_code then.
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    return code.upper() not in _TRANSIENT_REPLIES


RECORD_FIELDS = (
    "ts_ms", "request_id", "account", "key_id", "model", "input_tokens", "output_tokens",
    "credits", "usd", "price_version", "opt_in", "estimated", "status", "latency_ms",
    "overage", "cached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens",
    "endpoint",
)  # fmt: skip


def record_fields(record: UsageRecord) -> list[Any]:
    """Flat field/value list for the usage stream (schema: proto/usage_record.proto)."""
    out: list[Any] = []
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        out += [name, int(value) if isinstance(value, bool) else value]
    return out
