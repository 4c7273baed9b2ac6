"""Every loop that runs until cancelled stops when its task is cancelled, even when a library
swallowed that cancellation (redis-py can let a command complete instead) or turned it into an
error of its own: the stop request would be lost and shutdown would wait forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from critique_sidecar.core.errors import StoreUnavailable
from critique_sidecar.store.journal import JournalingLedger, SettlementJournal
from critique_sidecar.store.usage_retention import UsageRetention

_converted: list[BaseException] = []


async def _swallows_cancel(error: BaseException | None) -> None:
    """Awaits until cancelled, then raises `error` instead (the library's conversion) or, for
    None, returns as if nothing happened; the first time only, so a loop that fails this test
    still stops at the test's teardown."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        if _converted:
            raise
        _converted.append(error or asyncio.CancelledError())
        if error is not None:
            raise error from None


async def _stops(start: Callable[[], Coroutine[Any, Any, None]], entered: asyncio.Event) -> None:
    _converted.clear()
    task = asyncio.create_task(start())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert _converted, "the cancellation never reached the library's await"
    assert task in done, "the loop kept running after it was cancelled"
    assert task.cancelled()


@pytest.mark.parametrize(
    "error", [None, StoreUnavailable("TimeoutError"), RedisTimeoutError("timed out"), OSError(110)]
)
async def test_usage_retention_stops(error: BaseException | None) -> None:
    entered = asyncio.Event()
    retention = UsageRetention.__new__(UsageRetention)  # no Redis needed: trim_all is replaced

    async def trim_all() -> list[Any]:
        entered.set()
        await _swallows_cancel(error)
        return []

    retention.trim_all = trim_all  # type: ignore[method-assign]
    await _stops(lambda: retention.run_forever(0.01), entered)


@pytest.mark.parametrize("error", [None, RuntimeError("converted")])
async def test_journal_replay_stops(tmp_path: Path, error: BaseException | None) -> None:
    entered = asyncio.Event()
    journal = SettlementJournal(tmp_path / "journal.jsonl")
    journal.path.write_text("{}\n")  # something to replay
    ledger = JournalingLedger(None, journal)  # type: ignore[arg-type]

    async def replay() -> int:
        entered.set()
        await _swallows_cancel(error)
        return 0

    ledger.replay = replay  # type: ignore[method-assign]
    await _stops(lambda: ledger.replay_forever(0.01), entered)


class _SilentRedis:
    """The calls sample_backlogs makes, each swallowing or converting the cancellation."""

    def __init__(self, entered: asyncio.Event, error: BaseException | None) -> None:
        self.entered, self.error = entered, error

    async def llen(self, key: str) -> int:
        self.entered.set()
        await _swallows_cancel(self.error)
        return 0


@pytest.mark.parametrize("error", [None, RedisTimeoutError("timed out"), OSError(110)])
async def test_backlog_gauges_stop(error: BaseException | None) -> None:
    from critique_sidecar.config import Config
    from critique_sidecar.observability.backlogs import sample_backlogs
    from critique_sidecar.observability.metrics import Metrics

    entered = asyncio.Event()
    metrics = Metrics(process=False)
    await _stops(lambda: sample_backlogs(_SilentRedis(entered, error), metrics, Config(), 0.01), entered)
