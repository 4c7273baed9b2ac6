"""The one set of in-memory stand-ins for the core's interfaces, for unit tests of pure logic
(integration and end-to-end tests use a real Redis). Each implements a core Protocol:

    MemoryKeys     core.ledger.KeyDirectory    (`down`: every lookup fails as an unreachable store)
    MemoryLedger   core.ledger.Ledger          (answers `result`; settles once per request id)
    ListSink       core.capture.CaptureSink    (`fail`, `delay`: a failing or slow sink)
    FixedClock     core.clock.Clock"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from critique_sidecar.core.capture import CaptureRecord
from critique_sidecar.core.errors import StoreUnavailable
from critique_sidecar.core.keys import KeyRecord, generate_key, hash_key
from critique_sidecar.core.ledger import HoldRequest, HoldResult, SettleResult, UsageRecord

INFERENCE_SCOPES = frozenset({"read:inference", "write:inference"})


@dataclass
class MemoryKeys:
    records: dict[str, KeyRecord] = field(default_factory=dict)  # by key hash
    lookups: list[str] = field(default_factory=list)  # key hashes looked up, in order
    down: bool = False

    def put(
        self,
        key: str,
        account: str = "acct-1",
        scopes: Iterable[str] = INFERENCE_SCOPES,
        revoked: bool = False,
        key_id: str = "key_1",
    ) -> KeyRecord:
        """Store `key` as given."""
        record = KeyRecord(key_id=key_id, key_hash=hash_key(key), account=account, scopes=frozenset(scopes), revoked=revoked)  # fmt: skip
        self.records[record.key_hash] = record
        return record

    def add(self, account: str, scopes: Iterable[str] = INFERENCE_SCOPES) -> str:
        """A new key for `account`; returns the key."""
        key = generate_key()
        self.put(key, account, scopes, key_id=f"key_{len(self.records)}")
        return key

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups.append(key_hash)
        if self.down:
            raise StoreUnavailable("ConnectionError")
        return self.records.get(key_hash)


@dataclass
class MemoryLedger:
    result: HoldResult = field(default_factory=lambda: HoldResult(code=None))
    down: bool = False
    holds: list[HoldRequest] = field(default_factory=list)
    records: list[UsageRecord] = field(default_factory=list)  # every settle call's record
    settled: dict[str, int] = field(default_factory=dict)  # request id -> credits charged

    async def place_hold(self, hold: HoldRequest) -> HoldResult:
        if self.down:
            raise StoreUnavailable("TimeoutError")
        self.holds.append(hold)
        return self.result

    async def settle(self, record: UsageRecord) -> SettleResult:
        if self.down:
            raise StoreUnavailable("TimeoutError")
        self.records.append(record)
        if record.request_id in self.settled:
            return SettleResult(self.settled[record.request_id], applied=False)
        self.settled[record.request_id] = record.credits
        return SettleResult(record.credits, applied=True)


@dataclass
class ListSink:
    fail: BaseException | None = None
    delay: float = 0
    records: list[CaptureRecord] = field(default_factory=list)

    async def write(self, record: CaptureRecord) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow sink, slower than the meter's timeout
        if self.fail:
            raise self.fail
        self.records.append(record)


@dataclass
class FixedClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now
