"""Automatic pipelining keeps every command's own result and error, batches what arrives
together, survives a script flush, a killed connection and a Redis that stops answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from critique_sidecar.store.batcher import CommandBatcher, Script


@pytest.fixture
async def batcher(redis_client: aioredis.Redis) -> AsyncIterator[CommandBatcher]:
    b = CommandBatcher(redis_client)
    yield b
    await b.aclose()


async def test_concurrent_commands_share_one_round_trip_and_keep_their_results(
    batcher: CommandBatcher, redis_client: aioredis.Redis, account: str
) -> None:
    results = await asyncio.gather(*(batcher.execute(("INCRBY", f"{account}:n", i)) for i in range(1, 51)))
    assert sorted(int(r) for r in results) == sorted(sum(range(1, k + 1)) for k in range(1, 51))
    assert await redis_client.get(f"{account}:n") == str(sum(range(1, 51))).encode()
    assert batcher.round_trips == 1  # fifty commands, one write and one read


async def test_commands_issued_while_a_batch_is_on_the_wire_leave_together_next(
    batcher: CommandBatcher, account: str
) -> None:
    await batcher.execute(("PING",))  # connected: the next batch is written in the next loop turn
    first = asyncio.ensure_future(batcher.execute(("INCR", f"{account}:a")))
    await asyncio.sleep(0)  # the first batch is written now; these three queue behind it
    rest = [asyncio.ensure_future(batcher.execute(("INCR", f"{account}:a"))) for _ in range(3)]
    assert [int(r) for r in await asyncio.gather(first, *rest)] == [1, 2, 3, 4]
    assert batcher.round_trips == 1 + 2


async def test_one_failing_command_does_not_fail_its_batch_mates(
    batcher: CommandBatcher, redis_client: aioredis.Redis, account: str
) -> None:
    await redis_client.set(f"{account}:s", "text")
    ok: Any
    bad: Any
    after: Any
    ok, bad, after = await asyncio.gather(
        batcher.execute(("SET", f"{account}:t", "1")),
        batcher.execute(("INCR", f"{account}:s")),
        batcher.execute(("INCR", f"{account}:u")),
        return_exceptions=True,
    )
    assert ok == b"OK"
    assert isinstance(bad, ResponseError)
    assert after == 1


async def test_script_is_reloaded_after_a_flush(
    batcher: CommandBatcher, redis_client: aioredis.Redis, account: str
) -> None:
    script = Script(batcher, "return redis.call('INCR', KEYS[1])")
    assert await script([f"{account}:c"], []) == 1
    await redis_client.script_flush()
    assert await script([f"{account}:c"], []) == 2


async def test_a_killed_connection_is_replaced_without_failing_the_caller(
    batcher: CommandBatcher, redis_client: aioredis.Redis, account: str
) -> None:
    client_id = await batcher.execute(("CLIENT", "ID"))
    assert int(await redis_client.execute_command("CLIENT", "KILL", "ID", client_id)) == 1  # type: ignore[no-untyped-call]
    # Noticed either as the connection's end of file or when the INCR meets the dead socket
    # (then retried once on a new connection): either way the caller gets its answer.
    assert await batcher.execute(("INCR", f"{account}:k")) == 1
    assert await batcher.execute(("CLIENT", "ID")) != client_id


async def test_connection_failure_reaches_every_waiter() -> None:
    dead = aioredis.Redis(port=1, socket_connect_timeout=0.2)
    b = CommandBatcher(dead)
    results = await asyncio.gather(*(b.execute(("PING",)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()


async def _silent_redis() -> tuple[asyncio.Server, aioredis.Redis]:
    """A server that accepts and reads but never replies (a frozen Redis), and a client for it."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, aioredis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2)


async def test_a_redis_that_stops_answering_fails_the_batch_in_bounded_time() -> None:
    """A server that accepts and reads but never replies (a frozen Redis): each attempt waits
    one timeout, then the batch fails with a TimeoutError (the front door's 503)."""

    server, silent = await _silent_redis()
    port = server.sockets[0].getsockname()[1]
    b = CommandBatcher(silent)
    b._make_connection = _bare_connection(port)  # connects at once: the replies are what never come
    began = time.monotonic()
    first = [asyncio.ensure_future(b.execute(("PING",))) for _ in range(3)]
    await asyncio.sleep(0)  # the first batch is on the wire; these queue behind it
    queued = [asyncio.ensure_future(b.execute(("PING",))) for _ in range(3)]
    results = await asyncio.gather(*first, *queued, return_exceptions=True)
    took = time.monotonic() - began
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    # Two attempts of 0.2 s each for the first batch; the queued commands fail with it instead
    # of starting two attempts of their own (which would take 0.8 s).
    assert 0.4 <= took < 0.75
    assert b.round_trips == 2
    await b.aclose()
    await silent.aclose()
    server.close()


async def test_a_handshake_that_never_completes_fails_in_bounded_time() -> None:
    """The connection opens but redis-py's handshake is never answered: each attempt to connect
    is cut at the timeout, and the callers fail (they never wait on a half-open connection)."""

    server, silent = await _silent_redis()
    b = CommandBatcher(silent)
    began = time.monotonic()
    results = await asyncio.gather(*(b.execute(("PING",)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert 0.4 <= time.monotonic() - began < 0.75  # two attempts of 0.2 s
    assert b.round_trips == 0  # nothing was ever written as a batch
    await b.aclose()
    await silent.aclose()
    server.close()


async def test_error_replies_keep_their_code() -> None:
    """What the ledger classifies by (store/redis_ledger.is_rejection): redis-py's classes strip
    the code from the message of some replies; it stays in status_code."""
    from critique_sidecar.store.redis_ledger import is_rejection

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies = [b"-READONLY You can't write against a read only replica.\r\n", b"-WRONGTYPE Operation\r\n"]
        while await reader.read(65536):
            if replies:
                writer.write(replies.pop(0))

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    b = CommandBatcher(client)
    b._make_connection = _bare_connection(port)
    readonly = await asyncio.gather(b.execute(("INCR", "a")), return_exceptions=True)
    wrongtype = await asyncio.gather(b.execute(("INCR", "b")), return_exceptions=True)
    assert isinstance(readonly[0], ResponseError) and not is_rejection(readonly[0])
    assert isinstance(wrongtype[0], ResponseError) and is_rejection(wrongtype[0])
    await b.aclose()
    await client.aclose()
    server.close()


async def test_an_argument_that_cannot_be_sent_fails_only_its_own_call(batcher: CommandBatcher, account: str) -> None:
    bad: Any
    good: Any
    bad, good = await asyncio.gather(
        batcher.execute(("SET", f"{account}:x", None)),
        batcher.execute(("INCR", f"{account}:y")),
        return_exceptions=True,
    )
    assert isinstance(bad, DataError)  # a RedisError, as redis-py's encoder raises: the store layer maps it
    assert good == 1


async def test_a_retry_resends_only_what_was_not_answered() -> None:
    """A server that answers the first command on each connection and then goes silent: the
    first reply is delivered as it came, and only the unanswered command is sent again."""
    received: list[bytearray] = []  # what each connection was sent, as it arrives

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        received.append(data)
        while chunk := await reader.read(65536):
            if not data:
                writer.write(b":7\r\n")
                await writer.drain()
            data += chunk

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
    b = CommandBatcher(client)
    b._make_connection = _bare_connection(port)
    first, second = await asyncio.gather(b.execute(("INCR", "a")), b.execute(("INCR", "b")))
    assert first == 7 and second == 7
    assert b.round_trips == 2
    await b.aclose()
    server.close()
    await server.wait_closed()
    assert [data.count(b"INCR") for data in received] == [2, 1]  # "a" was not sent twice


def _bare_connection(port: int):  # type: ignore[no-untyped-def]
    from redis.asyncio import Connection

    # RESP2 and no CLIENT SETINFO: no handshake for the fake to answer
    return lambda: Connection(host="127.0.0.1", port=port, socket_connect_timeout=0.2, protocol=2, driver_info=None)


async def test_batches_are_bounded(redis_client: aioredis.Redis, account: str) -> None:
    b = CommandBatcher(redis_client, max_batch=128)
    results = await asyncio.gather(*(b.execute(("INCR", f"{account}:n")) for _ in range(300)))
    assert sorted(int(r) for r in results) == list(range(1, 301))
    assert b.round_trips == 3  # 128 + 128 + 44
    await b.aclose()


async def test_a_closed_batcher_refuses_calls_and_does_not_reconnect(batcher: CommandBatcher) -> None:
    assert await batcher.execute(("PING",)) in (True, b"PONG")
    await batcher.aclose()
    with pytest.raises(RedisConnectionError):
        await batcher.execute(("PING",))
    assert batcher._connection is None
