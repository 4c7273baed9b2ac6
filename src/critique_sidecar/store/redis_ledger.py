"""The Redis ledger: admission and settlement as one Lua script each (one round trip); their
KEYS, ARGV and replies are named in store/lua_contract.py."""

from __future__ import annotations

from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..core.ledger import HoldRequest, HoldResult, SettlementRejected, SettleResult, UsageRecord
from ..core.limits import rate_status
from . import keyspace as ks
from .batcher import CommandBatcher, Script
from .errors import store_call
from .lua_contract import HoldArgs, HoldKeys, HoldReply, SettleArgs, SettleKeys, SettleReply
from .scripts import lua_source, register
from .usage_records import register_account

# Day/month windows outlive the longest dashboard view (90 days).
WINDOW_TTL_S = 100 * 86400


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLedger:
    def __init__(
        self, redis: Any, settled_ttl_s: int = 7 * 86400, autopipeline: bool = False, grant_notice_days: int = 7
    ) -> None:
        self._redis = redis
        self._settled_ttl = settled_ttl_s
        self._grant_notice_ms = grant_notice_days * 86_400_000
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
        keys = HoldKeys(
            account=ks.account(a),
            settings=ks.settings(a),
            holds=ks.holds(a),
            hold_expiry=ks.hold_expiry(a),
            day=ks.day(a, hold.day),
            month=ks.month(a, hold.month),
            key_controls=ks.key_controls(a, hold.key_id),
            limiter=ks.limiter(a),
            hold_info=ks.hold_info(a),
            account_window=ks.minute_window(a),
            key_window=ks.minute_window(a, hold.key_id),
            notify_outbox=ks.notify_outbox(a),
            end_user_limits=ks.end_user_limits(a, hold.end_user),
            end_user_window=ks.end_user_window(a, hold.end_user),
            end_user_counts=ks.end_user_counts(a, hold.day),
            end_user_month=ks.end_user_month(a, hold.month),
            grants=ks.grants(a),
            grants_done=ks.grants_done(a),
        )
        args = HoldArgs(
            request_id=hold.request_id,
            amount=hold.amount,
            now_ms=hold.now_ms,
            expires_ms=hold.expires_ms,
            window_ttl_s=WINDOW_TTL_S,
            key_id=hold.key_id,
            model=hold.model,
            tokens=hold.tokens,
            end_user=hold.end_user,
            grant_notice_ms=self._grant_notice_ms,
        )
        r = HoldReply(*await self._place_hold(keys=list(keys), args=list(args)))
        code = _s(r.code)
        return HoldResult(
            code=None if code == "ok" else code,
            warnings=tuple(w for w in _s(r.warnings).split(",") if w),
            training_opt_in=bool(int(r.training_opt_in)),
            funds={"balance": int(r.balance), "floor": int(r.floor), "held": int(r.held)},
            control=_s(r.control),
            retry_after_ms=int(r.retry_ms),
            rate=rate_status(
                int(r.requests_limit),
                int(r.requests_remaining),
                int(r.requests_reset_ms),
                int(r.tokens_limit),
                int(r.tokens_remaining),
                int(r.tokens_reset_ms),
            ),
        )

    @store_call
    async def settle(self, record: UsageRecord) -> SettleResult:
        a = record.account
        if a not in self._registered:  # once per account and process: how consumers find streams
            await register_account(self._redis, a)
            self._registered.add(a)
        keys = SettleKeys(
            account=ks.account(a),
            holds=ks.holds(a),
            hold_expiry=ks.hold_expiry(a),
            day=ks.day(a, record.day),
            month=ks.month(a, record.month),
            done=ks.settled(a, record.request_id),
            usage=ks.usage_stream(a),
            limiter=ks.limiter(a),
            hold_info=ks.hold_info(a),
            account_window=ks.minute_window(a),
            key_window=ks.minute_window(a, record.key_id),
            settings=ks.settings(a),
            notify_outbox=ks.notify_outbox(a),
            end_users=ks.end_users(a, record.day),
            end_user_counts=ks.end_user_counts(a, record.day),
            end_user_month=ks.end_user_month(a, record.month),
            grants=ks.grants(a),
            grants_done=ks.grants_done(a),
        )
        args = SettleArgs(
            request_id=record.request_id,
            charge=record.credits,
            window_ttl_s=WINDOW_TTL_S,
            done_ttl_s=self._settled_ttl,
            # One argument, not one per field: each argument costs the client packing time.
            record=orjson.dumps([str(v) for v in record_fields(record)]),
            model=record.model,
            key_id=record.key_id,
            endpoint=record.endpoint,
            end_user=record.end_user,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            day=record.day,
            month=record.month,
            now_ms=record.ts_ms,
        )
        try:
            reply = SettleReply(*await self._settle(keys=list(keys), args=list(args)))
        except ResponseError as exc:
            if is_rejection(exc):
                raise SettlementRejected(str(exc)[:200]) from exc
            raise  # store_call: the store is unavailable (read-only replica, loading, OOM, ...)
        return SettleResult(credits=int(reply.charged), applied=bool(int(reply.applied)))


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
    "endpoint", "end_user", "paid_by",
)  # fmt: skip


def record_fields(record: UsageRecord) -> list[Any]:
    """Flat field/value list for the usage stream (schema: proto/usage_record.proto)."""
    out: list[Any] = []
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        out += [name, int(value) if isinstance(value, bool) else value]
    return out
