"""Automatic pipelining keeps every command's own result and error, and survives a script flush."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from critique_sidecar.store.batcher import CommandBatcher, Script


async def test_concurrent_commands_share_a_pipeline_and_keep_their_results(redis_client: aioredis.Redis, account: str) -> None:
    batcher = CommandBatcher(redis_client)
    sent: list[int] = []
    real_pipeline = redis_client.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        sent.append(1)
        return real_pipeline(*args, **kwargs)  # type: ignore[arg-type]

    redis_client.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(batcher.execute(("INCRBY", f"{account}:n", i)) for i in range(1, 51)))
    finally:
        redis_client.pipeline = real_pipeline  # type: ignore[method-assign]
    assert sorted(int(r) for r in results) == sorted(sum(range(1, k + 1)) for k in range(1, 51))
    assert int(await redis_client.get(f"{account}:n")) == sum(range(1, 51))
    assert len(sent) == 1  # fifty commands, one round trip


async def test_one_failing_command_does_not_fail_its_batch_mates(redis_client: aioredis.Redis, account: str) -> None:
    batcher = CommandBatcher(redis_client)
    await redis_client.set(f"{account}:s", "text")
    ok, bad = await asyncio.gather(
        batcher.execute(("SET", f"{account}:t", "1")), batcher.execute(("INCR", f"{account}:s")), return_exceptions=True
    )
    assert ok is True or ok == b"OK"
    assert isinstance(bad, ResponseError)


async def test_script_is_reloaded_after_a_flush(redis_client: aioredis.Redis, account: str) -> None:
    script = Script(CommandBatcher(redis_client), "return redis.call('INCR', KEYS[1])")
    assert await script([f"{account}:c"], []) == 1
    await redis_client.script_flush()
    assert await script([f"{account}:c"], []) == 2


async def test_connection_failure_reaches_every_waiter() -> None:
    dead = aioredis.Redis(port=1, socket_connect_timeout=0.2)
    batcher = CommandBatcher(dead)
    results = await asyncio.gather(*(batcher.execute(("PING",)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()
