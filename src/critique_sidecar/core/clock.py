"""Injectable UTC clock, and the UTC window names the ledger keys are derived from."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def day_window(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}-{at.day:02d}"


def month_window(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def seconds_to_next_utc_midnight(at: datetime) -> int:
    tomorrow = (at + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - at).total_seconds() + 0.999))


def window_end(window: str, at: datetime) -> datetime:
    """When the UTC window (day, month, hour, minute) that holds `at` ends."""
    if window == "month":
        return next_month_start(at)
    if window == "hour":
        return at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if window == "minute":
        return at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return at.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def next_month_start(at: datetime) -> datetime:
    first = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def to_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
