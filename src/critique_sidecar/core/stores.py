"""The storage-neutral interfaces of the operator actions (provisioning/) and the background
workers (workers/), and the values they pass; store/ implements them on Redis. Like Ledger,
SettingsStore and DashboardSource, they keep those layers free of Redis (tests/repo/test_layering.py)."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from .audit import Change
from .key_controls import KeyControls
from .keys import KeyDirectory, KeyRecord
from .money import format_credits
from .operator_tokens import OperatorToken

# -- keys ------------------------------------------------------------------------------------


class KeyStore(KeyDirectory, Protocol):
    async def create(
        self, account: str, scopes: tuple[str, ...], name: str = "", parent: str = ""
    ) -> tuple[str, KeyRecord]:
        """A new key (`parent`: the id of the key that created it); returns (secret, record)."""
        ...

    async def by_id(self, key_id: str) -> KeyRecord | None: ...

    async def list(self, account: str) -> list[KeyRecord]: ...

    async def children(self, account: str, key_id: str) -> builtins.list[str]:
        """The ids of the keys this key created."""
        ...

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke the key, its rotated-out secrets and every key it created, transitively."""
        ...

    async def set_controls(self, account: str, key_id: str, controls: KeyControls) -> KeyControls: ...

    async def controls_of(self, account: str, key_id: str) -> KeyControls: ...

    async def rotate(self, key_id: str, grace_s: int, now_ms: int) -> tuple[str, KeyRecord, KeyRecord] | None: ...


class JsonModel(Protocol):
    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...


class KeyAdmin(Protocol):
    """What the customer's key routes (web/keys.py) ask of the operator actions
    (provisioning.service.Provisioning), so the web layer needs neither."""

    async def list_keys(self, account: str) -> JsonModel: ...

    async def create_key_from_body(self, change: Change, account: str, body: Any) -> JsonModel:
        """A key from a decoded JSON body, validated and limited by the caller's own key."""
        ...

    async def revoke_key(self, change: Change, account: str, key_id: str) -> JsonModel: ...


# -- credits ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    balance: int  # micro-credits
    held: int  # micro-credits in open holds
    open_holds: int


@dataclass(frozen=True, slots=True)
class OpenHold:
    request_id: str
    amount: int  # micro-credits
    expires_ms: int


@dataclass(frozen=True, slots=True)
class GrantView:
    """One live credit grant (store/lua/lib/grants.lua). state: w (waiting for its effective
    time), a (active), x (expired: what is left is held by open requests)."""

    grant_id: str
    category: str  # paid | promotional
    amount: int  # micro-credits granted
    remaining: int  # micro-credits not spent (nor expired)
    held: int  # micro-credits open holds hold on it
    priority: int  # 0-100, lower spends first
    effective_ms: int  # 0: effective at once
    expires_ms: int  # 0: never
    created_ms: int
    state: str

    def spend_key(self) -> tuple[int, float, int, int, str]:
        """Spend order: priority, soonest expiry (none last), promotional first, oldest."""
        return (
            self.priority, self.expires_ms or float("inf"), 0 if self.category == "promotional" else 1,
            self.created_ms, self.grant_id.rjust(24, "0"),
        )  # fmt: skip


class AccountStore(Protocol):
    async def balance(self, account: str) -> Balance: ...

    async def grants(self, account: str) -> list[GrantView]:
        """The account's live grants, in spend order."""
        ...

    async def open_holds(self, account: str, limit: int = 1000) -> list[OpenHold]:
        """Up to `limit` open holds, soonest to expire first."""
        ...


@dataclass(frozen=True, slots=True)
class CreditChangeResult:
    status: str  # applied | replay | conflict | insufficient
    balance_before: int  # micro-credits (for insufficient: the balance)
    balance_after: int  # micro-credits (for insufficient: what open holds need)
    audit_id: str
    ts_ms: int  # when the change was first applied
    grant_id: str = ""  # the grant a grant created


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """A grant's terms (docs/design.md, "Grants"): its category, when it becomes effective and
    expires (ms since the epoch; 0: at once, never) and its priority (0-100, lower spends first)."""

    category: str = "paid"
    effective_ms: int = 0
    expires_ms: int = 0
    priority: int = 50


def fingerprint(*parts: object) -> str:
    """What makes two requests 'the same' under one Idempotency-Key."""
    return hashlib.sha256(orjson.dumps([str(p) for p in parts])).hexdigest()


class CreditChanges(Protocol):
    async def apply(
        self,
        account: str,
        delta: int,
        idempotency_key: str,
        request_fingerprint: str,
        change: Change,
        action: str,
        terms: GrantTerms | None = None,
        now_ms: int | None = None,
    ) -> CreditChangeResult:
        """A grant (delta > 0) or debit, once per Idempotency-Key, with its audit entry."""
        ...


# -- audit and usage -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[dict[str, Any]]  # newest first
    next_cursor: str | None  # pass as `before` for the next (older) page


class AuditTrail(Protocol):
    async def append(
        self, change: Change, action: str, *, account: str | None, target: str | None, before: Any, after: Any
    ) -> str:
        """An entry in the account's trail (account None: the operator tokens' trail)."""
        ...

    async def page(self, account: str | None, before: str | None, limit: int) -> AuditPage:
        """Newest first; ValueError for a cursor that is not one this trail issued."""
        ...


class UsageRecords(Protocol):
    async def records_after(self, account: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """(records oldest first, whether more follow); ValueError for a bad cursor."""
        ...

    async def accounts(self) -> list[str]:
        """Accounts that have usage records."""
        ...


class OperatorTokenCheck(Protocol):
    async def authenticate(self, token: str) -> OperatorToken | None: ...


# -- background workers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """One budget notification event waiting for delivery."""

    account: str
    stream_id: str
    fields: dict[str, str]

    @property
    def event_id(self) -> str:
        """Stable per threshold, window and account (the same on every retry)."""
        f = self.fields
        if f.get("kind") == "low_balance":  # once per fall below the level: the stream id tells falls apart
            key = f"{self.account}|low_balance|{self.stream_id}"
        elif f.get("kind") == "grant_expiring":  # once per grant
            key = f"{self.account}|grant.expiring|{f.get('grant_id')}"
        elif f.get("scope"):  # a spend rate's trip: once per limit, key and window
            key = f"{self.account}|{f['scope']}:{f.get('kind')}|{f.get('key_id')}|{f.get('window')}"
        else:
            key = f"{self.account}|{f.get('kind')}|{f.get('window')}|{f.get('threshold_percent')}"
        return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def payload(self) -> dict[str, Any]:
        """The webhook body (JSON). Credit amounts are exact 6-decimal strings; request caps
        count requests (integers)."""
        from .limit_table import ACCOUNT_LIMITS

        f = self.fields
        kind = f.get("kind", "")
        body: dict[str, Any] = {
            "id": self.event_id,
            "type": "budget.low_balance" if kind == "low_balance" else "budget.threshold_crossed",
            "account": self.account,
            "kind": kind,
            "balance": format_credits(int(f.get("balance") or 0)),
            "request_id": f.get("request_id"),
            "created_at_ms": int(f.get("ts_ms") or 0),
        }
        used, limit = int(f.get("used") or 0), int(f.get("limit") or 0)
        if kind == "grant_expiring":  # place_hold.lua: a grant within CRITIQUE_GRANT_NOTICE_DAYS of expiry
            expires = int(f.get("expires_ms") or 0)
            body.update(
                type="grant.expiring",
                grant_id=f.get("grant_id"),
                category=f.get("category"),
                remaining=format_credits(int(f.get("remaining") or 0)),
                expires_at=datetime.fromtimestamp(expires / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        elif f.get("scope"):  # place_hold.lua: a spend rate refused a request
            start = int(f.get("window") or 0)
            body.update(
                type="limit.tripped",
                limit_name=f"{f['scope']}:{kind}",
                key_id=f.get("key_id") or None,
                window_start=datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                used=format_credits(used),
                limit=format_credits(limit),
            )
        elif kind == "low_balance":
            body["level"] = format_credits(limit)
        else:
            counts = {row.name for row in ACCOUNT_LIMITS if not row.credits}
            amount = (lambda v: v) if kind in counts else format_credits
            body.update(
                window=f.get("window"),
                threshold_percent=int(f.get("threshold_percent") or 0),
                used=amount(used),
                limit=amount(limit),
            )
        return body


class NotificationQueue(Protocol):
    """The budget-notification outbox as its delivery worker sees it."""

    consumer: str

    async def accounts(self) -> list[str]: ...

    async def read(self, account: str, count: int, pending: bool) -> list[Notification]: ...

    async def webhook(self, account: str) -> tuple[str | None, str | None]:
        """(url, signing secret) as configured now."""
        ...

    async def touch(self, n: Notification) -> None: ...

    async def ack(self, n: Notification) -> None: ...

    async def dead_letter(self, n: Notification, attempts: int, error: str) -> None: ...

    def wakeups(self) -> AsyncIterator[str | None]:
        """Accounts announced as having new events as they are queued; None after a gap in
        the announcements (anything may have been missed). Ends only by cancellation."""
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    record: dict[str, Any]  # a usage record as JSON
    redelivered: bool  # delivered before (own pending or claimed from another consumer)


class UsageFeed(Protocol):
    """One account's usage records for one consumer group, at least once."""

    async def ensure_group(self, start_id: str = "0") -> bool: ...

    async def read(self, count: int) -> list[Delivery]: ...

    async def ack(self, ids: Sequence[str]) -> int: ...


class UsageFeeds(Protocol):
    async def accounts(self) -> list[str]: ...

    def feed(self, account: str) -> UsageFeed: ...
