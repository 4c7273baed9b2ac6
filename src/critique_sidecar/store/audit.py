"""The audit trail of provisioning changes: who changed what, when, before and after.

One Redis stream per account (`keyspace.audit`, in the account's slot, so a credit change and
its entry are written by one script: never one without the other), and one stream for the
operator tokens themselves (`keyspace.OPERATOR_AUDIT`). Entries are never trimmed: they come
from operator actions, not from traffic.

Stream fields (strings): ts_ms, actor_type, actor_id, actor_name, action, account, target,
before, after (JSON texts), request_id, idempotency_key. Read back as:

    {"id": "<stream id>", "ts": "2026-12-05T23:10:00.123Z", "actor": {"type": "operator",
     "id": "op_...", "name": "billing"}, "action": "credits.grant", "account": "acme",
     "target": null, "before": {...}, "after": {...}, "request_id": "req_...",
     "idempotency_key": "..."}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from ..core.account_settings import AccountSettings
from ..core.audit import Actor, Change
from ..core.dashboard_source import parse_record_id as parse_stream_id
from ..core.stores import AuditPage
from . import keyspace as ks
from .errors import store_call
from .usage_records import as_text

SETTINGS_PATCH = "settings.patch"
__all__ = ["Actor", "AuditPage", "Change", "RedisAuditTrail", "append", "entry_json", "read_page", "static_fields"]


def static_fields(
    change: Change, action: str, account: str | None, target: str | None, idempotency_key: str | None = None
) -> list[str]:
    """The entry's fields known before the change (scripts add before/after themselves)."""
    return [
        "ts_ms", str(change.ts_ms), "actor_type", change.actor.type, "actor_id", change.actor.id,
        "actor_name", change.actor.name, "action", action, "account", account or "", "target", target or "",
        "request_id", change.request_id, "idempotency_key", idempotency_key or "",
    ]  # fmt: skip


@store_call
async def append(
    redis: Any,
    stream: str,
    change: Change,
    action: str,
    *,
    account: str | None,
    target: str | None,
    before: Any,
    after: Any,
) -> str:
    fields = static_fields(change, action, account, target)
    fields += ["before", orjson.dumps(before).decode(), "after", orjson.dumps(after).decode()]
    entry_id = await redis.xadd(stream, dict(zip(fields[::2], fields[1::2], strict=True)))
    return as_text(entry_id)


def _render(action: str, raw: str) -> Any:
    value = orjson.loads(raw) if raw else None
    if action == SETTINGS_PATCH and isinstance(value, dict):  # scripts store the raw settings hash
        return AccountSettings.from_hash({str(k): str(v) for k, v in value.items()}).to_json()
    return value


def entry_json(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    ts_ms = int(fields.get("ts_ms", "0") or 0)
    action = fields.get("action", "")
    return {
        "id": entry_id,
        "ts": datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": {
            "type": fields.get("actor_type", ""),
            "id": fields.get("actor_id", ""),
            "name": fields.get("actor_name", ""),
        },
        "action": action,
        "account": fields.get("account") or None,
        "target": fields.get("target") or None,
        "before": _render(action, fields.get("before", "")),
        "after": _render(action, fields.get("after", "")),
        "request_id": fields.get("request_id", ""),
        "idempotency_key": fields.get("idempotency_key") or None,
    }


@store_call
async def read_page(redis: Any, stream: str, before: str | None, limit: int) -> AuditPage:
    """Newest first; `before` is the id of the last entry of the previous page (exclusive)."""
    if before is not None:
        parse_stream_id(before)  # ValueError for anything that is not a stream id
    rows = await redis.xrevrange(stream, max=f"({before}" if before else "+", min="-", count=limit + 1)
    entries = [
        entry_json(as_text(sid), {as_text(k): as_text(v) for k, v in fields.items()}) for sid, fields in rows[:limit]
    ]
    return AuditPage(entries, entries[-1]["id"] if len(rows) > limit else None)


def account_stream(account: str) -> str:
    return ks.audit(ks.check_account(account))


class RedisAuditTrail:
    """core.stores.AuditTrail: one stream per account, one for the operator tokens."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def append(
        self, change: Change, action: str, *, account: str | None, target: str | None, before: Any, after: Any
    ) -> str:
        stream = ks.OPERATOR_AUDIT if account is None else account_stream(account)
        return await append(
            self._redis, stream, change, action, account=account, target=target, before=before, after=after
        )

    async def page(self, account: str | None, before: str | None, limit: int) -> AuditPage:
        stream = ks.OPERATOR_AUDIT if account is None else account_stream(account)
        return await read_page(self._redis, stream, before, limit)
