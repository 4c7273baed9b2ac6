"""Who made a change, for the audit trail (store/audit.py writes and reads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """An operator token, the CLI (the local operator), or a customer's key."""

    type: str  # operator | cli | key
    id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """The context of one change: who, which request, when (unix ms)."""

    actor: Actor
    request_id: str
    ts_ms: int
