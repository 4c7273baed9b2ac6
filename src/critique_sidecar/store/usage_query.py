"""Reads behind the usage dashboard: the daily rollups (never the raw records) and one page of
the activity log (the usage stream, newest first).

The rollups are the per-day hashes `settle.lua` increments atomically with each charge:
fields `credits requests in out` (and `admitted`, counted by admission), `m:<model>:<field>`
per model, `k:<key id>:<field>` per API key and `e:<endpoint>:<field>` per endpoint. A dashboard
view of N days reads N hashes, whatever the traffic was.

End users are not in the day hash (an account may have very many): each day has a sorted set
of its end users by credits and a hash of their counts (store/lua/end_users.lua reads them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.account_settings import AccountSettings
from ..core.dashboard_source import (
    ActivityPage,
    Counts,
    DayRollup,
    EndUsers,
    KeyInfo,
    KeyUsage,
    RateUsage,
    SpendWindows,
    UsageSnapshot,
    parse_record_id,
)
from ..core.key_controls import KeyControls
from . import keyspace as ks
from .accounts import parse_grant
from .errors import store_call
from .scripts import register
from .usage_records import as_text, record_json

PREFIX_SCAN_CAP = 1000  # a prefix search ranks at most this many matches (the first by id)
_COUNTERS = {"credits": "credits", "requests": "requests", "in": "input_tokens", "out": "output_tokens"}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _int(raw: Any) -> int:
    try:
        return int(raw) if raw not in (None, False, b"", "") else 0
    except (TypeError, ValueError):
        return 0


def parse_day(day: str, data: dict[str, str]) -> DayRollup:
    """A day hash -> totals, per model, per key and per endpoint."""
    totals: dict[str, int] = {}
    groups: dict[str, dict[str, dict[str, int]]] = {"m": {}, "k": {}, "e": {}}
    for name, raw in data.items():
        if name in _COUNTERS:
            totals[_COUNTERS[name]] = _int(raw)
            continue
        kind, _, rest = name.partition(":")
        subject, _, counter = rest.rpartition(":")
        if kind in groups and subject and counter in _COUNTERS:
            groups[kind].setdefault(subject, {})[_COUNTERS[counter]] = _int(raw)
    return DayRollup(
        day=day,
        total=Counts(**totals),
        admitted=_int(data.get("admitted")),
        counters=_own_counters(data),
        by_model={m: Counts(**c) for m, c in groups["m"].items()},
        by_key={k: Counts(**c) for k, c in groups["k"].items()},
        by_endpoint={e: Counts(**c) for e, c in groups["e"].items()},
    )


def _own_counters(data: dict[str, str]) -> dict[str, int]:
    """A window hash's own counters (not per model or key, not notification markers)."""
    return {name: _int(raw) for name, raw in data.items() if ":" not in name}


class UsageQuery:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._snapshot = register(redis, "usage_snapshot")
        self._end_users = register(redis, "end_users")

    @store_call
    async def snapshot(self, account: str, days: Sequence[str], month: str) -> UsageSnapshot:
        """The given UTC days' rollups, the month's spend, balance and settings, atomically."""
        ks.check_account(account)
        keys = [ks.account(account), ks.settings(account), ks.month(account, month), ks.limiter(account)]
        keys += [ks.grants(account)] + [ks.day(account, d) for d in days]
        acct, settings, month_data, spend, grants_data, *day_data = await self._snapshot(keys=keys, args=[])
        grants = [g for i, v in _pairs(grants_data).items() if (g := parse_grant(i, v)) is not None]
        month_counters = _own_counters(_pairs(month_data))
        return UsageSnapshot(
            days=[parse_day(d, _pairs(flat)) for d, flat in zip(days, day_data, strict=True)],
            month_credits=month_counters.get("credits", 0),
            balance=_int(acct[0]),
            held=_int(acct[1]),
            settings=AccountSettings.from_hash(_pairs(settings)),
            month_counters=month_counters,
            spend=SpendWindows.parse(as_text(spend) if spend else ""),
            grants=sorted(grants, key=lambda g: g.spend_key()),
        )

    @store_call
    async def end_users(self, account: str, days: Sequence[str], limit: int, prefix: str = "") -> EndUsers:
        ks.check_account(account)
        keys = [ks.end_user_scratch(account)]
        for d in days:
            keys += [ks.end_users(account, d), ks.end_user_counts(account, d)]
        more, *rows = await self._end_users(keys=keys, args=[limit, prefix, PREFIX_SCAN_CAP])
        found = [
            (as_text(u), Counts(credits=_int(c), requests=_int(r), input_tokens=_int(i), output_tokens=_int(o)))
            for u, c, r, i, o in rows
        ]
        return EndUsers(found, bool(more))

    @store_call
    async def activity(self, account: str, before: str | None, limit: int) -> ActivityPage:
        """Up to `limit` records newest first, strictly older than stream id `before` (None:
        from the newest). Keyset pagination on the stream id: records written meanwhile have
        larger ids, so they never shift or repeat a later page."""
        if before is not None and parse_record_id(before) == (0, 0):
            return ActivityPage([], False)  # nothing is older than the first possible id
        rows = await self._redis.xrevrange(
            ks.usage_stream(ks.check_account(account)), max=f"({before}" if before else "+", min="-", count=limit + 1
        )
        entries = [(as_text(sid), record_json(sid, fields)) for sid, fields in rows]
        return ActivityPage(entries[:limit], len(entries) > limit)

    @store_call
    async def keys(self, account: str, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        """Names of the account's keys among `key_ids` (others, or unknown ids, are left out)."""
        ks.check_account(account)
        owned = {as_text(k) for k in await self._redis.smembers(ks.account_keys(account))}
        wanted = [k for k in key_ids if k in owned]
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)  # keys live in other slots: no MULTI
        for key_id in wanted:
            pipe.get(ks.key_by_id(key_id))
        hashes = await pipe.execute()
        found = [(k, as_text(h)) for k, h in zip(wanted, hashes, strict=True) if h]
        pipe = self._redis.pipeline(transaction=False)
        for _, key_hash in found:
            pipe.hmget(ks.key_by_hash(key_hash), "name", "revoked", "account")
        for key_id, _ in found:  # each key's controls (in the account's slot)
            pipe.hgetall(ks.key_controls(account, key_id))
        replies = await pipe.execute()
        out: dict[str, KeyInfo] = {}
        for (key_id, _), (name, revoked, owner), controls in zip(
            found, replies[: len(found)], replies[len(found) :], strict=True
        ):
            if owner is not None and as_text(owner) == account:
                out[key_id] = KeyInfo(
                    key_id,
                    as_text(name or ""),
                    as_text(revoked or "0") == "1",
                    KeyControls.from_hash({as_text(k): as_text(v) for k, v in controls.items()}),
                )
        return out

    @store_call
    async def rates(self, account: str, now_ms: int) -> RateUsage:
        """The account's live rate-limit counters (one slot; not atomic with the snapshot)."""
        ks.check_account(account)
        window, start = ks.minute_window(account), now_ms - 60_000
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcount(window, f"({start}", "+inf")
        pipe.hget(ks.limiter(account), "tw")
        pipe.zrangebyscore(window, "-inf", start)  # left the window, not yet removed by an admission
        pipe.zcount(ks.hold_expiry(account), f"({now_ms}", "+inf")
        requests, tokens, stale, in_flight = await pipe.execute()
        gone = sum(_int(as_text(m).rpartition(":")[2]) for m in stale)
        return RateUsage(int(requests), max(_int(tokens) - gone, 0) if requests else 0, int(in_flight))

    @store_call
    async def key_usage(self, account: str, key_id: str, day: str, now_ms: int) -> KeyUsage:
        """One key's live counters (one slot; not atomic with the account's)."""
        ks.check_account(account)
        window, start = ks.minute_window(account, key_id), now_ms - 60_000
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(ks.day(account, day), f"k:{key_id}:credits")
        pipe.hmget(ks.limiter(account), f"h:{key_id}", f"n:{key_id}", f"tw:{key_id}", f"sp:{key_id}")
        pipe.zcount(window, f"({start}", "+inf")
        pipe.zrangebyscore(window, "-inf", start)
        credits, (held, in_flight, tokens, spend), requests, stale = await pipe.execute()
        gone = sum(_int(as_text(m).rpartition(":")[2]) for m in stale)
        return KeyUsage(
            day_credits=_int(credits),
            held=_int(held),
            in_flight=_int(in_flight),
            requests=int(requests),
            tokens=max(_int(tokens) - gone, 0) if requests else 0,
            spend=SpendWindows.parse(as_text(spend) if spend else ""),
        )
