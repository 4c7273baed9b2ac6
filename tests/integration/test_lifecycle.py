"""lifecycle.Lifecycle on a real Redis: the background work both front doors run, and the
order of shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from critique_sidecar.app import build_components
from critique_sidecar.config import Config
from critique_sidecar.lifecycle import Lifecycle
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.usage_records import register_account


async def test_usage_retention_runs_and_stop_drains_in_order(
    redis_url: str, redis_client: aioredis.Redis, account: str, tmp_path: Path
) -> None:
    config = Config(redis_url=redis_url, journal_path=tmp_path / "journal.jsonl", usage_retention_days=1,
                    usage_trim_interval_s=0.05)  # fmt: skip
    stream = ks.usage_stream(account)
    two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
    await redis_client.xadd(stream, {"request_id": "req_old"}, id=f"{two_days_ago}-0")
    await redis_client.xadd(stream, {"request_id": "req_new"})
    await register_account(redis_client, account)

    components = build_components(config)
    lifecycle = Lifecycle(config, components)
    await lifecycle.start()
    try:
        assert set(lifecycle.tasks) == {"journal-replay", "revocation-feed", "usage-retention", "backlog-gauges"}
        deadline = time.monotonic() + 60  # retention trims the old record on its own schedule
        while time.monotonic() < deadline:
            if await redis_client.xlen(stream) == 1:
                break
            await asyncio.sleep(0.05)
        rows: Any = await redis_client.xrange(stream)
        [(_, fields)] = rows
        assert fields[b"request_id"] == b"req_new"

        order: list[str] = []

        async def step(name: str, fail: bool = False) -> None:
            assert all(not t.done() for t in lifecycle.tasks.values())  # background work runs until the drain ends
            order.append(name)
            if fail:
                raise RuntimeError("a drain step failed")

        await lifecycle.stop(lambda: step("health"), lambda: step("grpc", fail=True), lambda: step("http"))
        assert order == ["health", "grpc", "http"]  # a failing step does not skip the rest
        assert all(t.done() for t in lifecycle.tasks.values())
        await lifecycle.stop(lambda: step("again"))  # idempotent: a second signal does nothing
        assert order == ["health", "grpc", "http"]
    finally:
        await lifecycle.stop()  # idempotent; never leaves retention running past the test


async def test_retention_off_when_its_interval_is_zero(redis_url: str, tmp_path: Path) -> None:
    config = Config(
        redis_url=redis_url, journal_path=tmp_path / "j.jsonl", usage_trim_interval_s=0, redis_cluster=False
    )
    lifecycle = Lifecycle(config, build_components(config))
    await lifecycle.start()
    assert set(lifecycle.tasks) == {"journal-replay", "revocation-feed", "backlog-gauges"}
    await lifecycle.stop()
