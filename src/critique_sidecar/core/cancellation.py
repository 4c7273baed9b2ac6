"""Stopping loops that run until cancelled."""

from __future__ import annotations

import asyncio


def raise_if_cancelling(error: BaseException | None = None) -> None:
    """For loops that run until cancelled: if this task has been asked to stop, stop. Called in
    each round and where a loop logs an error and tries again: a client library can swallow the
    cancellation it receives (a command that still completes) or turn it into an error of its
    own, and the stop request would be lost; the loop would outlive its shutdown (seen: usage
    retention, whose round walks every account, hung the shutdown of a test)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
