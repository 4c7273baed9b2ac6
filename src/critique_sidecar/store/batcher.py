"""Automatic pipelining on one dedicated connection: the hot path's Redis client.

Every metered request runs two Lua scripts. Through redis-py's client each call pays a pool
checkout and release, a retry wrapper, a task for the write timeout and a timeout context per
read: ~105 us of client CPU per EVALSHA sent alone (measured), as much as the rest of our
per-request logic. Here the scripts go through one connection that this class owns: commands
issued while a batch is on the wire queue up and leave together in the next single write, their
replies are read in order under one deadline for the whole batch. Under load batches grow by
themselves; a lone command pays one write and one read.

Commands stay independent (no MULTI): each gets its own result or error. A connection failure or
timeout drops the connection and sends what was not answered once more on a new one (as
redis-py's Retry did), so only idempotent commands belong here: the ledger's scripts are, by
request id. The deadline (CRITIQUE_REDIS_TIMEOUT_S) covers one batch: connecting, writing and
reading its replies; a command that arrives while a batch is on the wire waits for it first."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_Pending = list[tuple[bytes, "asyncio.Future[Any]"]]  # (packed command, its caller's future)
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class Script:
    """A Lua script called by SHA through the batcher, reloaded if Redis lost it (restart)."""

    def __init__(self, batcher: CommandBatcher, source: str) -> None:
        self._batcher = batcher
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self._batcher.execute(command)
        except NoScriptError:
            await self._batcher.execute(("SCRIPT", "LOAD", self._source))
            return await self._batcher.execute(command)


class CommandBatcher:
    def __init__(self, redis: Any, timeout_s: float | None = None, retries: int = 1, max_batch: int = 128) -> None:
        pool = redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # The deadline is ours, one per batch (asyncio.timeout); redis-py's per-socket-operation
        # timeouts would add a task per write and a context per read.
        self._timeout = timeout_s if timeout_s is not None else kwargs.get("socket_timeout") or 5.0
        kwargs["socket_timeout"] = None
        kwargs["retry"] = None
        self._make_connection: Callable[[], Any] = lambda: pool.connection_class(**kwargs)
        self._connection: Any = None
        self._retries = retries
        self._max_batch = max_batch  # bounds one write and the work under one deadline
        self._queue: _Pending = []
        self._sending = False
        self._closed = False
        self._drainer: asyncio.Future[None] | None = None
        self.round_trips = 0  # batches written (for tests and curiosity)

    async def execute(self, command: tuple[Any, ...]) -> Any:
        if self._closed:
            raise RedisConnectionError("the Redis batcher is closed")
        # Packed here, in the caller's turn: an argument hiredis cannot pack fails this call
        # alone, not the batch it would have joined. hiredis packs in C (~1.6 us per ledger
        # script vs ~11 us for redis-py's asyncio packer).
        try:
            packed = hiredis.pack_command(command)
        except TypeError as exc:  # what redis-py's own encoder raises for such arguments
            raise DataError(f"cannot send {exc}") from exc
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((packed, future))
        if not self._sending:
            self._sending = True
            # Starts next loop turn, so this turn's commands join; kept so it is never collected.
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._send(batch)
        finally:
            self._sending = False
            if self._queue:  # only when cancelled mid-batch (shutdown): nobody would send these
                _fail(self._take_queue(), RedisConnectionError("the Redis batcher stopped"))

    def _take_queue(self) -> _Pending:
        queued, self._queue = self._queue, []
        return queued

    async def _send(self, batch: _Pending) -> None:
        for attempt in range(self._retries + 1):
            answered: list[Any] = []
            try:
                await self._round_trip([packed for packed, _ in batch], answered)
                _deliver(batch, answered)
                return
            except _RETRYABLE as exc:
                await self._drop_connection()
                # Replies read before the failure are final: deliver them, resend only the rest
                # (a command resent may have run already: hence idempotent commands only).
                _deliver(batch, answered)
                batch = batch[len(answered) :]
                if attempt == self._retries or self._closed:
                    error = (
                        RedisTimeoutError("Redis did not answer in time")
                        if isinstance(exc, asyncio.TimeoutError)
                        else exc
                    )
                    # What queued behind this batch would wait its own full timeout and retry
                    # against the same dead or frozen Redis: it fails now, with the same error.
                    _fail(batch + self._take_queue(), error)
                    return
            except BaseException as exc:
                await self._drop_connection()
                _deliver(batch, answered)
                _fail(batch[len(answered) :], exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise
                return

    async def _round_trip(self, commands: list[bytes], answered: list[Any]) -> None:
        """Write the batch, append each reply (or its own error) to `answered` as it is read."""
        if self._connection is None:
            if self._closed:
                raise RedisConnectionError("the Redis batcher is closed")
            self._connection = self._make_connection()
        conn = self._connection
        self.round_trips += 1
        async with asyncio.timeout(self._timeout):
            await conn.send_packed_command(b"".join(commands), check_health=False)
            for _ in commands:
                try:
                    answered.append(await conn.read_response())
                except ResponseError as error:  # this command's own error; the connection is fine
                    answered.append(error)

    async def _drop_connection(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        """Stop: later calls fail at once, a batch in flight is not resent, the connection closes."""
        self._closed = True
        await self._drop_connection()


def _deliver(batch: _Pending, answered: list[Any]) -> None:
    for (_, future), result in zip(batch, answered, strict=False):
        if not future.done():
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _fail(batch: _Pending, error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
