"""Ending exchanges. However a request ends (completed, cut, the client gone, its handler
cancelled), its exchange is closed exactly once, in a task of its own: a server cancels the
request's own task when the client goes, and a settlement awaited there would be cancelled with
it. Shutdown waits for the closes still running. Both front doors use one `Closings` each."""

from __future__ import annotations

import asyncio
import logging

from .exchange import Exchange

log = logging.getLogger(__name__)


class Closings:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def close(self, exchange: Exchange) -> asyncio.Task[None] | None:
        """Start closing `exchange`, once (a later call returns the same task); None when it has
        nothing to close (the common case: settled in its response, or never admitted)."""
        task = exchange.closing
        if task is None:
            if not exchange.needs_close():
                return None
            task = asyncio.ensure_future(_close(exchange))
            exchange.closing = task
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return task

    async def drain(self) -> None:
        """Wait for the closes still running (at shutdown)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def _close(exchange: Exchange) -> None:
    try:
        await exchange.close()
    except Exception:
        log.exception("settling a cut-off request failed")
