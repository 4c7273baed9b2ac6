"""The settlement journal: charges that could not reach Redis after a response was served.

Append-only JSON lines, fsynced before the client's response goes on, so a served request
is never lost. Replay settles each record through the normal script, which is idempotent by
request id (its done-marker), so a record that did reach Redis before the failure, or a replay
interrupted half way, never charges twice."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

import orjson

from ..core.errors import StoreUnavailable
from ..core.ledger import HoldRequest, HoldResult, Ledger, SettleResult, UsageRecord

log = logging.getLogger(__name__)


class SettlementJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: UsageRecord) -> None:
        line = orjson.dumps(dataclasses.asdict(record)) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> list[UsageRecord]:
        if not self.path.exists():
            return []
        records = []
        for n, line in enumerate(self.path.read_bytes().splitlines(), 1):
            try:
                records.append(UsageRecord(**orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError):
                log.error("journal %s line %d is unreadable; kept aside", self.path, n)  # e.g. torn last write
        return records

    def depth(self) -> int:
        return len(self.pending())

    def rewrite(self, records: list[UsageRecord]) -> None:
        """Atomically replace the journal with `records` (what is still unsettled)."""
        if not records:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(orjson.dumps(dataclasses.asdict(r)) + b"\n" for r in records))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(self.path)


class JournalingLedger:
    """A Ledger whose settlements survive a store outage (see module docstring)."""

    def __init__(self, inner: Ledger, journal: SettlementJournal) -> None:
        self._inner = inner
        self.journal = journal
        self._replaying = asyncio.Lock()

    async def place_hold(self, hold: HoldRequest) -> HoldResult:
        return await self._inner.place_hold(hold)  # no store, no admission: fail closed

    async def settle(self, record: UsageRecord) -> SettleResult:
        try:
            return await self._inner.settle(record)
        except StoreUnavailable:
            self.journal.append(record)
            log.warning("store unavailable: settlement of %s journaled", record.request_id)
            return SettleResult(credits=record.credits, applied=True)

    async def replay(self) -> int:
        """Settle journaled records in order; stop at the first store failure. Returns how
        many were replayed."""
        async with self._replaying:
            records = self.journal.pending()
            done = 0
            for record in records:
                try:
                    await self._inner.settle(record)
                except StoreUnavailable:
                    break
                done += 1
            if done:
                self.journal.rewrite(records[done:])
                log.info("journal: replayed %d settlement(s), %d left", done, len(records) - done)
            return done

    async def replay_forever(self, interval_s: float = 1.0) -> None:
        while True:
            if self.journal.path.exists():
                await self.replay()
            await asyncio.sleep(interval_s)
