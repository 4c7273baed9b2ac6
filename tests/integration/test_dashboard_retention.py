"""Usage retention on real Redis: old records are trimmed only once every consumer group has
acknowledged them, the account registry, `usage trim`, and the sidecar's periodic trim.
(Named test_dashboard_* to run early in a full run, where test_dashboard_data.py ran: the
periodic trim walks every account the tests before it registered in the shared Redis.)"""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.usage_export import UsageExporter
from critique_sidecar.store.usage_records import USAGE_ACCOUNTS, rebuild_registry, registered_accounts
from critique_sidecar.store.usage_retention import UsageRetention

from .usage_kit import add_old, cli, poll, record, stream_entries


async def ids_left(r: aioredis.Redis, account: str) -> list[str]:
    return [sid for sid, _ in await stream_entries(r, account)]


async def test_retention_trims_old_acknowledged_records_but_never_unacknowledged_ones(
    redis_client: aioredis.Redis, account: str
) -> None:
    old = await add_old(redis_client, account, 40, 6)
    recent = []
    for _ in range(4):
        rec = record(account)
        await RedisLedger(redis_client).settle(rec)
        recent.append(rec.request_id)
    retention = UsageRetention(redis_client, retention_days=30)
    billing = UsageExporter(redis_client, account, "billing", "c1")
    await billing.ensure_group("0")

    got = await billing.read(3)  # old[0..2] delivered; old[0..1] acknowledged, old[2] pending
    assert [d.id for d in got] == old[:3]
    await billing.ack(old[:2])
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by == "billing" and result.min_id == old[2]
    assert (await ids_left(redis_client, account))[:4] == old[2:]

    await billing.ack([old[2]])  # now old[3..5] were never delivered: still kept
    await billing.read(1)
    await billing.ack([old[3]])
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by == "billing"
    assert (await ids_left(redis_client, account))[:2] == old[4:]

    await billing.ack([d.id for d in await billing.read(100)])  # everything delivered and acked
    result = await retention.trim(account)
    assert result.deleted == 2 and result.held_by is None and result.length == 4
    left = await stream_entries(redis_client, account)
    assert [f["request_id"] for _, f in left] == recent  # younger than the cutoff: kept


async def test_retention_without_groups_is_by_age_and_every_group_counts(
    redis_client: aioredis.Redis, account: str
) -> None:
    old = await add_old(redis_client, account, 10, 5)
    newer = await add_old(redis_client, account, 2, 3)
    assert (await UsageRetention(redis_client, retention_days=30).trim(account)).deleted == 0
    result = await UsageRetention(redis_client, retention_days=5).trim(account)
    assert result.deleted == 5 and result.held_by is None and await ids_left(redis_client, account) == newer

    # A group that has read nothing yet holds everything, even when another group is done.
    other = account + "-g"
    old = await add_old(redis_client, other, 10, 5)
    done = UsageExporter(redis_client, other, "billing", "c1")
    await done.ensure_group("0")
    await done.ack([d.id for d in await done.read(10)])
    lazy = UsageExporter(redis_client, other, "analytics", "c1")
    await lazy.ensure_group("0")
    result = await UsageRetention(redis_client, retention_days=1).trim(other)
    assert result.deleted == 0 and result.held_by == "analytics" and await ids_left(redis_client, other) == old
    assert (await UsageRetention(redis_client, retention_days=1).trim("nobody-" + account)).deleted == 0


async def test_settlement_no_longer_caps_the_stream_length(redis_client: aioredis.Redis, account: str) -> None:
    ledger = RedisLedger(redis_client)
    for _ in range(250):
        await ledger.settle(record(account))
    assert await redis_client.xlen(ks.usage_stream(account)) == 250  # retention trims, settlement never does


async def test_account_registry_and_cli_trim(redis_client: aioredis.Redis, redis_url: str, account: str) -> None:
    await RedisLedger(redis_client).settle(record(account))
    assert account in await registered_accounts(redis_client)
    hidden = account + "-unregistered"
    await add_old(redis_client, hidden, 45, 3)
    assert hidden not in await registered_accounts(redis_client)
    assert hidden in await rebuild_registry(redis_client)
    assert await redis_client.sismember(USAGE_ACCOUNTS, hidden)

    out = cli(redis_url, "usage", "trim", "--account", hidden, "--json")  # default retention: 30 days
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["account"], row["deleted"], row["held_by_group"], row["length"]) == (hidden, 3, None, 0)
    listed = cli(redis_url, "usage", "accounts").stdout.split()
    assert account in listed and hidden in listed


async def test_one_refused_account_never_keeps_retention_from_the_others(
    redis_client: aioredis.Redis, account: str
) -> None:
    broken = account + "-broken"
    await redis_client.set(ks.usage_stream(broken), "not a stream")  # Redis refuses XTRIM on it
    await redis_client.sadd(USAGE_ACCOUNTS, broken)
    await add_old(redis_client, account, 40, 4)
    await redis_client.sadd(USAGE_ACCOUNTS, account)
    try:
        results = await UsageRetention(redis_client, retention_days=30).trim_all()
        trimmed = {r.account: r.deleted for r in results}
        assert trimmed[account] == 4 and broken not in trimmed
    finally:
        await redis_client.srem(USAGE_ACCOUNTS, broken)


async def test_sidecar_periodic_trim(redis_client: aioredis.Redis, account: str) -> None:
    await add_old(redis_client, account, 40, 4)
    await RedisLedger(redis_client).settle(record(account))  # registers the account
    retention = UsageRetention(redis_client, retention_days=30)
    task = asyncio.create_task(retention.run_forever(0.05))

    async def trimmed() -> bool:
        return int(await redis_client.xlen(ks.usage_stream(account))) == 1

    try:
        await poll(trimmed, "the periodic trim")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
