"""Automatic pipelining on one dedicated connection: the hot path's Redis client.

Every metered request runs two Lua scripts. Through redis-py's client each call pays a pool
checkout and release, a retry wrapper, a task for the write timeout and a timeout context per
read: ~105 us of client CPU per EVALSHA sent alone (measured), as much as the rest of our
per-request logic. Here the scripts go through one connection that this class owns: commands
issued while a batch is on the wire queue up and leave together in the next single write, their
replies are read in order under one deadline for the whole batch. Under load batches grow by
themselves; a lone command pays one write and one read.

The connection is opened by redis-py (so AUTH, SELECT, TLS, unix sockets and the handshake are
redis-py's), then its transport is handed to `_Link`, a plain asyncio Protocol: replies are
parsed by hiredis straight from `data_received` and each resolves its caller's future there, with
no reader task, stream buffer or per-read timeout context. bench/redis_client.py measures it
against redis-py's client and the earlier stream-based batcher: ~148 / ~54 / ~27 us of client
CPU per ledger-sized EVALSHA for one caller, ~122 / ~17 / ~13 us at eight concurrent callers.

Commands stay independent (no MULTI): each gets its own result or error. A connection failure or
timeout drops the connection and sends what was not answered once more on a new one (as
redis-py's Retry did), so only idempotent commands belong here: the ledger's scripts are, by
request id. The deadline (CRITIQUE_REDIS_TIMEOUT_S) covers connecting, and then each batch from
its write to its last reply; a command that arrives while a batch is on the wire waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class _Call:
    __slots__ = ("attempts", "future", "packed")

    def __init__(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        self.packed = packed
        self.future = future
        self.attempts = 0


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


class _Link(asyncio.Protocol):
    """One open connection: writes batches, parses replies as bytes arrive."""

    def __init__(self, owner: CommandBatcher, conn: Any, encoding: str | None) -> None:
        self._owner = owner
        # Kept for the link's lifetime: redis-py closes the transport when its connection
        # object is collected. `_writer` is the StreamWriter redis-py keeps (no public accessor).
        self._conn = conn
        self.transport: asyncio.Transport = conn._writer.transport
        # Error replies come back as values (not raised), so one bad command never stops the
        # parse of its batch mates' replies; they are mapped to redis-py's classes on delivery.
        self._reader = hiredis.Reader(replyError=ResponseError, encoding=encoding)
        self.in_flight: deque[_Call] = deque()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        reader, in_flight = self._reader, self.in_flight
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not in_flight:  # a reply nobody asked for: the stream is out of step
                self._owner._failed(self, RedisConnectionError("unexpected reply from Redis"))
                return
            call = in_flight.popleft()
            if not call.future.done():
                if isinstance(reply, ResponseError):
                    call.future.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
                else:
                    call.future.set_result(reply)
        if not in_flight:
            self._owner._answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._owner._failed(self, RedisConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost reports it

    def close(self) -> None:
        self.in_flight.clear()
        self.transport.abort()


class CommandBatcher:
    def __init__(self, redis: Any, timeout_s: float | None = None, retries: int = 1, max_batch: int = 128) -> None:
        pool = redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # The deadline is ours, one per batch; redis-py's per-socket-operation timeouts would
        # add a task per write and a context per read.
        self._timeout = timeout_s if timeout_s is not None else kwargs.get("socket_timeout") or 5.0
        kwargs["socket_timeout"] = None
        kwargs["retry"] = None
        self._encoding = kwargs.get("encoding", "utf-8") if kwargs.get("decode_responses") else None
        self._make_connection: Callable[[], Any] = lambda: pool.connection_class(**kwargs)
        self._connection: _Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retries = retries
        self._max_batch = max_batch  # bounds one write and the work under one deadline
        self._queue: deque[_Call] = deque()
        self._flush_soon = False
        self._deadline: asyncio.TimerHandle | None = None
        self._closed = False
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(packed, future))
        if not self._flush_soon:
            # Written at the end of this loop turn, so this turn's other commands join it.
            self._flush_soon = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_soon = False
        link = self._connection
        if self._closed or not self._queue or (link is not None and link.in_flight):
            return  # nothing to send, or the batch on the wire sends the rest when answered
        if link is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        link.in_flight.extend(batch)
        self.round_trips += 1
        self._deadline = asyncio.get_running_loop().call_later(self._timeout, self._expired, link)
        link.transport.write(b"".join(call.packed for call in batch))

    async def _connect(self) -> None:
        conn = self._make_connection()
        try:
            async with asyncio.timeout(self._timeout):
                await conn.connect()
            link = _Link(self, conn, self._encoding)  # redis-py did the handshake: the socket is ours now
            link.transport.set_protocol(link)
        except BaseException as exc:
            self._connecting = None
            await _quietly_disconnect(conn)
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not isinstance(exc, Exception):
                raise
            self._retry_or_fail(list(self._queue)[: self._max_batch], _timeout_error(exc))
            return
        self._connecting = None
        if self._closed:
            link.transport.abort()
            return
        self._connection = link
        self._flush()

    def _answered(self, link: _Link) -> None:
        """Every reply of the batch on the wire has arrived: send what queued meanwhile."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if link is self._connection and self._queue:
            self._flush()

    def _expired(self, link: _Link) -> None:
        if link is self._connection and link.in_flight:
            self._failed(link, RedisTimeoutError("Redis did not answer in time"))

    def _failed(self, link: _Link, error: Exception) -> None:
        """The connection broke or timed out: drop it; resend what it had not answered."""
        if link is not self._connection:
            return
        self._connection = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        unanswered = list(link.in_flight)
        link.in_flight.clear()
        link.transport.abort()
        if unanswered:
            self._retry_or_fail(unanswered, error, requeue=True)
        elif self._queue and not self._closed:
            self._flush()

    def _retry_or_fail(self, batch: list[_Call], error: Exception, requeue: bool = False) -> None:
        """One more attempt for `batch` (a command resent may have run already: hence idempotent
        commands only), unless it has had its attempts: then it fails, and so does everything
        queued behind it, which would wait its own full timeout against the same dead or frozen
        Redis."""
        for call in batch:
            call.attempts += 1
        if self._closed or any(call.attempts > self._retries for call in batch):
            queued = list(self._queue)  # holds `batch` itself unless it is being requeued
            self._queue.clear()
            _fail([*batch, *queued] if requeue else queued, error)
            return
        if requeue:
            self._queue.extendleft(reversed(batch))
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def aclose(self) -> None:
        """Stop: later calls fail at once, a batch in flight is not resent, the connection closes."""
        self._closed = True
        link, self._connection = self._connection, None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        pending = [*(link.in_flight if link else ()), *self._queue]
        self._queue.clear()
        _fail(pending, RedisConnectionError("the Redis batcher is closed"))
        if link is not None:
            link.in_flight.clear()
            link.transport.close()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None


def _timeout_error(exc: Exception) -> Exception:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not isinstance(exc, RedisTimeoutError):
        return RedisTimeoutError("Redis did not answer in time")
    return exc if isinstance(exc, _RETRYABLE) else RedisConnectionError(str(exc))


async def _quietly_disconnect(conn: Any) -> None:
    with contextlib.suppress(Exception):  # already broken: nothing more to release
        await conn.disconnect(nowait=True)


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(error)
