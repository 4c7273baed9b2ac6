"""What the usage dashboard reads, storage-neutral: the daily rollups, the activity log's
pages and key names (store/usage_query.UsageQuery implements DashboardSource)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .account_settings import AccountSettings
from .key_controls import KeyControls
from .limit_table import Limit
from .stores import GrantView

RECORD_ID_MAX_LEN = 41  # "<ms>-<seq>", both unsigned 64-bit


def parse_record_id(text: str) -> tuple[int, int]:
    """A usage record's id (its stream id), '1732600000000-3' -> (1732600000000, 3);
    ValueError for anything else."""
    if len(text) > RECORD_ID_MAX_LEN:
        raise ValueError("record id too long")
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or not ms.isascii() or not seq.isascii():
        raise ValueError(f"not a record id: {text!r}")
    a, b = int(ms), int(seq)
    if a >= 2**64 or b >= 2**64:
        raise ValueError("record id out of range")
    return a, b


@dataclass(frozen=True, slots=True)
class Counts:
    credits: int = 0  # micro-credits
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.credits + other.credits,
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )


@dataclass(frozen=True, slots=True)
class DayRollup:
    day: str
    total: Counts = Counts()
    admitted: int = 0  # admissions (what the daily request cap counts)
    counters: dict[str, int] = field(default_factory=dict)  # the hash's own counters (credits, admitted, ...)
    by_model: dict[str, Counts] = field(default_factory=dict)
    by_key: dict[str, Counts] = field(default_factory=dict)
    by_endpoint: dict[str, Counts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpendWindows:
    """The spend rates' settled credits: the UTC minute and hour (counted from the epoch) the
    account last settled in, and the micro-credits settled in each (store/lua/lib/spend_rate.lua)."""

    minute: int = 0
    minute_credits: int = 0
    hour: int = 0
    hour_credits: int = 0

    @classmethod
    def parse(cls, raw: str) -> SpendWindows:
        parts = raw.split("|")
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
            return cls()
        return cls(*(int(p) for p in parts))

    def spent(self, window: str, now_ms: int) -> int:
        """Settled in the window that holds `now_ms` (0 once the stored window has passed)."""
        if window == "minute":
            return self.minute_credits if self.minute >= now_ms // 60_000 else 0
        return self.hour_credits if self.hour >= now_ms // 3_600_000 else 0


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    days: list[DayRollup]  # as asked, oldest first
    month_credits: int  # micro-credits settled in the month asked
    balance: int
    held: int
    settings: AccountSettings
    month_counters: dict[str, int] = field(default_factory=dict)  # the month hash's counters
    spend: SpendWindows = SpendWindows()
    grants: list[GrantView] = field(default_factory=list)  # the live grants, in spend order

    def cap_usage(self, row: Limit, now_ms: int = 0) -> int:
        """What an account cap (core/limit_table.py) counts in its current window: settled
        credits, or admissions (the spend rates: in the UTC minute or hour of `now_ms`)."""
        if row.window in ("minute", "hour"):
            return self.spend.spent(row.window, now_ms)
        counters = self.month_counters if row.window == "month" else self.days[-1].counters
        return counters.get("credits" if row.credits else "admitted", 0)


@dataclass(frozen=True, slots=True)
class EndUsers:
    """Usage per end user over some days: the ones asked for, most credits first."""

    rows: list[tuple[str, Counts]]
    has_more: bool  # more end users than shown (or, for a prefix, than were looked at)


@dataclass(frozen=True, slots=True)
class ActivityPage:
    entries: list[tuple[str, dict[str, Any]]]  # (record id, the record as JSON), newest first
    has_more: bool


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    name: str
    revoked: bool
    controls: KeyControls = field(default_factory=KeyControls)  # expiry, models, caps, rates


@dataclass(frozen=True, slots=True)
class RateUsage:
    """The account's live rate-limit counters: requests and tokens in the last minute's window
    (counted while a per-minute limit is set), and requests in flight (open, unexpired holds)."""

    requests: int = 0
    tokens: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """One key's live counters, as its limits count them: credits settled today, credits held
    and requests in flight (tracked while the key has a credit cap or a concurrency limit),
    requests and tokens in the last minute (while it has a per-minute limit), its spend rates."""

    day_credits: int = 0
    held: int = 0
    in_flight: int = 0
    requests: int = 0
    tokens: int = 0
    spend: SpendWindows = SpendWindows()


class DashboardSource(Protocol):
    async def snapshot(self, account: str, days: Sequence[str], month: str) -> UsageSnapshot: ...

    async def activity(self, account: str, before: str | None, limit: int) -> ActivityPage: ...

    async def keys(self, account: str, key_ids: Sequence[str]) -> dict[str, KeyInfo]: ...

    async def rates(self, account: str, now_ms: int) -> RateUsage: ...

    async def key_usage(self, account: str, key_id: str, day: str, now_ms: int) -> KeyUsage: ...

    async def end_users(self, account: str, days: Sequence[str], limit: int, prefix: str = "") -> EndUsers:
        """The `limit` end users with the most credits over `days`, among those whose id starts
        with `prefix` (all of them when "")."""
        ...
