"""The settlement journal: charges that could not reach Redis after a response was served.

Append-only JSON lines, fsynced before the client's response goes on, so a served request
is never lost. Replay settles each record through the normal script, which is idempotent by
request id (its done-marker), so a record that did reach Redis before the failure, or a replay
interrupted half way, never charges twice.

Records appended while a replay is in flight are kept: a replay only removes the bytes it read.
A line that cannot be read back (a write torn by a crash) is moved, as it is, to
`<journal>.unreadable` for an operator, never silently dropped; a record the store rejects for
a reason other than being unreachable is moved to `<journal>.rejected` so it cannot block the
records behind it. Replay must finish within the done-marker's lifetime (settled_ttl_s)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

import orjson

from ..core.errors import StoreUnavailable
from ..core.ledger import HoldRequest, HoldResult, Ledger, SettlementRejected, SettleResult, UsageRecord
from .errors import raise_if_cancelling

log = logging.getLogger(__name__)


class SettlementJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: UsageRecord) -> None:
        line = orjson.dumps(dataclasses.asdict(record)) + b"\n"
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # after a torn last line: never glue a record onto it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> tuple[list[UsageRecord], list[bytes], int]:
        """(records, unreadable lines, bytes read). Appends are synchronous, so in one process
        the file never changes between a read and the rewrite that follows it."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], [], 0
        records, bad = [], []
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(UsageRecord(**orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError):
                log.error("journal %s line %d is unreadable; moved to %s", self.path, n, self.aside("unreadable"))
                bad.append(line)
        return records, bad, len(data)

    def pending(self) -> list[UsageRecord]:
        return self.read()[0]

    def depth(self) -> int:
        return len(self.pending())

    def aside(self, kind: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{kind}")

    def set_aside(self, kind: str, lines: list[bytes]) -> None:
        """Append lines to `<journal>.<kind>` (fsynced) for an operator to look at."""
        if not lines:
            return
        fd = os.open(self.aside(kind), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)

    def rewrite(self, records: list[UsageRecord], consumed: int | None = None) -> None:
        """Atomically replace the first `consumed` bytes of the journal (all of it when None)
        with `records`, what is still unsettled; anything appended after them is kept."""
        tail = b""
        if consumed is not None:
            try:
                with open(self.path, "rb") as f:
                    f.seek(consumed)
                    tail = f.read()
            except FileNotFoundError:
                pass
        body = b"".join(orjson.dumps(dataclasses.asdict(r)) + b"\n" for r in records) + tail
        if not body:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


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
        except SettlementRejected as exc:
            self._reject(record, exc)
            return SettleResult(credits=record.credits, applied=False)

    def _reject(self, record: UsageRecord, exc: Exception) -> None:
        """A settlement the store refused: kept aside for an operator (critique_journal_rejected
        counts the file's lines; alert CritiqueSettlementRejected), never retried in line."""
        self.journal.set_aside("rejected", [orjson.dumps(dataclasses.asdict(record))])
        log.error(
            "settlement of %s rejected by the store (%s); moved to %s",
            record.request_id,
            exc,
            self.journal.aside("rejected"),
        )

    async def replay(self) -> int:
        """Settle journaled records in order; stop at the first store failure. Returns how
        many were settled (or set aside as rejected)."""
        async with self._replaying:
            records, unreadable, consumed = self.journal.read()
            done = 0
            rejected: list[bytes] = []
            for record in records:
                try:
                    await self._inner.settle(record)
                except StoreUnavailable:
                    break
                except SettlementRejected as exc:
                    log.error("journal: settlement of %s rejected by the store (%s)", record.request_id, exc)
                    rejected.append(orjson.dumps(dataclasses.asdict(record)))
                except Exception:
                    log.exception(
                        "journal: settlement of %s rejected; moved to %s",
                        record.request_id,
                        self.journal.aside("rejected"),
                    )
                    rejected.append(orjson.dumps(dataclasses.asdict(record)))
                done += 1
            if done or unreadable:
                self.journal.set_aside("unreadable", unreadable)
                self.journal.set_aside("rejected", rejected)
                self.journal.rewrite(records[done:], consumed)
                log.info("journal: replayed %d settlement(s), %d left", done - len(rejected), len(records) - done)
            return done

    async def replay_forever(self, interval_s: float = 1.0) -> None:
        while True:
            raise_if_cancelling()
            if self.journal.path.exists():
                try:
                    await self.replay()
                except Exception as exc:
                    raise_if_cancelling(exc)
                    log.exception("journal replay failed; retrying in %.1fs", interval_s)
            await asyncio.sleep(interval_s)
