"""Usage records as read back from the per-account usage stream, and the registry of accounts
that have one.

Schema: `proto/usage_record.proto` (message `critique.v1.UsageRecord`) is the contract. Each
stream entry carries the message's fields by name, values as strings (`store/redis_ledger.py`
writes them in `settle.lua`, atomically with the charge). Readers decode only the fields the
message declares, typed as it declares them, so nothing else a stream entry might carry (and
never any prompt or completion text) can leak into the API or the billing export.

JSON shape of one record (dashboard activity log and `critique-sidecar usage export`):

    {"id": "<stream id>", "ts": "2026-11-26T08:00:00.123Z", "ts_ms": 1795..., "request_id": "...",
     "account": "...", "key_id": "...", "model": "...", "input_tokens": 12, "output_tokens": 34,
     "credits": "0.000123", "usd": "0.00000123", "price_version": "...", "opt_in": false,
     "estimated": false, "status": "ok", "latency_ms": 45, "overage": 0, "endpoint": "chat",
     "cached_input_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
     "reasoning_tokens": 0, "end_user": "", "paid_by": "g3:120,legacy:3"}

The four dimensions are parts of their totals (cache reads and writes of `input_tokens`,
reasoning of `output_tokens`), so a bill is explained line by line without counting twice.

`credits` is the charge as an exact 6-decimal credit string (the stream holds integer
micro-credits); `usd` is the exact decimal string as charged.

Account discovery: streams are per account (`crt:{a:<account>}:usage`, one Cluster slot per
account), so a billing consumer or the retention job needs the list of accounts. The ledger
adds an account to the set `USAGE_ACCOUNTS` before its first settlement in each process
(`register_account`). That set is a single key outside any account's hash tag: it lives in one
slot, is touched with single-key commands only, and so works on Redis Cluster too. It can be
rebuilt from the streams themselves with `rebuild_registry` (a SCAN over every node).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from .._generated.usage_record_pb2 import UsageRecord as UsageRecordPb
from ..core.dashboard_source import parse_record_id
from ..core.money import format_credits
from ..core.usage_schema import SCHEMA
from . import keyspace as ks
from .errors import store_call

USAGE_ACCOUNTS = "crt:usage:accounts"
"""Set of account ids that have (or had) a usage stream."""

_INT_TYPES = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_UINT32,
)


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def to_proto(fields: Mapping[Any, Any]) -> UsageRecordPb:
    """A stream entry's field map -> the protobuf message (unknown fields are ignored;
    missing ones keep proto3 defaults). ValueError when a value does not fit its type."""
    data = {as_text(k): as_text(v) for k, v in fields.items()}
    msg = UsageRecordPb()
    for name, kind in SCHEMA:
        raw = data.get(name)
        if raw is None:
            continue
        if kind in _INT_TYPES:
            setattr(msg, name, int(raw))
        elif kind == FieldDescriptor.TYPE_BOOL:
            setattr(msg, name, raw in ("1", "true", "True"))
        else:
            setattr(msg, name, raw)
    return msg


def iso_ms(ts_ms: int) -> str:
    at = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def record_json(stream_id: Any, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """One stream entry as the JSON record documented above."""
    msg = to_proto(fields)
    out: dict[str, Any] = {"id": as_text(stream_id), "ts": iso_ms(msg.ts_ms)}
    for name, _ in SCHEMA:
        out[name] = getattr(msg, name)
    out["credits"] = format_credits(msg.credits)
    return out


# -- the account registry --------------------------------------------------------------


async def register_account(redis: Any, account: str) -> None:
    await redis.sadd(USAGE_ACCOUNTS, account)


async def registered_accounts(redis: Any) -> list[str]:
    """Every registered account, sorted (SSCAN: never blocks Redis on a big set)."""
    found = {as_text(a) async for a in redis.sscan_iter(USAGE_ACCOUNTS, count=1000)}
    return sorted(found)


def _account_of_stream(key: str) -> str | None:
    prefix, suffix = "crt:{a:", "}:usage"
    if key.startswith(prefix) and key.endswith(suffix):
        account = key[len(prefix) : -len(suffix)]
        if ks.usage_stream(account) == key and ks.ACCOUNT_RE.fullmatch(account):
            return account
    return None


async def rebuild_registry(redis: Any) -> list[str]:
    """Add every account that has a usage stream to the registry (SCAN of the whole keyspace,
    every node on Cluster; an operator's repair tool, not a hot path). Returns the accounts found."""
    found: set[str] = set()
    async for key in redis.scan_iter(match="crt:{a:*}:usage", count=1000, _type="stream"):
        account = _account_of_stream(as_text(key))
        if account:
            found.add(account)
    if found:
        await redis.sadd(USAGE_ACCOUNTS, *sorted(found))
    return sorted(found)


# -- the export over HTTP (provisioning API): a stateless cursor over the stream ----------


@store_call
async def records_after(redis: Any, account: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` records after stream id `after` (exclusive; None: from the oldest kept),
    oldest first, and whether more follow. The caller keeps the last id as its cursor."""
    if after is not None:
        parse_record_id(after)
    rows = await redis.xrange(
        ks.usage_stream(ks.check_account(account)), min=f"({after}" if after else "-", count=limit + 1
    )
    return [record_json(sid, fields) for sid, fields in rows[:limit]], len(rows) > limit


class RedisUsageRecords:
    """core.stores.UsageRecords on the per-account usage streams."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def records_after(self, account: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return await records_after(self._redis, account, after, limit)

    @store_call
    async def accounts(self) -> list[str]:
        return await registered_accounts(self._redis)
