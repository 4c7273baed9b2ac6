"""What the usage dashboard reads, storage-neutral: the daily rollups, the activity log's
pages and key names (store/usage_query.UsageQuery implements DashboardSource)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .account_settings import AccountSettings
from .key_controls import KeyControls
from .limit_table import Limit

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
class UsageSnapshot:
    days: list[DayRollup]  # as asked, oldest first
    month_credits: int  # micro-credits settled in the month asked
    balance: int
    held: int
    settings: AccountSettings
    month_counters: dict[str, int] = field(default_factory=dict)  # the month hash's counters

    def cap_usage(self, row: Limit) -> int:
        """What an account cap (core/limit_table.py) counts in its current window: settled
        credits, or admissions."""
        counters = self.month_counters if row.window == "month" else self.days[-1].counters
        return counters.get("credits" if row.credits else "admitted", 0)


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


class DashboardSource(Protocol):
    async def snapshot(self, account: str, days: Sequence[str], month: str) -> UsageSnapshot: ...

    async def activity(self, account: str, before: str | None, limit: int) -> ActivityPage: ...

    async def keys(self, account: str, key_ids: Sequence[str]) -> dict[str, KeyInfo]: ...

    async def rates(self, account: str, now_ms: int) -> RateUsage: ...
