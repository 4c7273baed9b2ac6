"""The billing export on real Redis: the consumer group delivers every usage record at least
once until acknowledged (a dead consumer's records are taken over), and `usage export` prints
them as JSON lines."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from critique_sidecar.core.money import format_credits
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.redis_ledger import RECORD_FIELDS, RedisLedger
from critique_sidecar.store.usage_export import UsageExporter

from .usage_kit import cli, record


async def test_consumer_group_delivers_at_least_once_and_acks(redis_client: aioredis.Redis, account: str) -> None:
    ledger = RedisLedger(redis_client)
    recs = [record(account, credits=i) for i in range(10)]
    for rec in recs:
        await ledger.settle(rec)
    c1 = UsageExporter(redis_client, account, "billing", "c1", min_idle_ms=60_000)
    assert await c1.ensure_group() is True and await c1.ensure_group() is False

    first = await c1.read(4)
    assert [d.record["request_id"] for d in first] == [r.request_id for r in recs[:4]]
    assert not any(d.redelivered for d in first)
    # Not acknowledged (the consumer "crashed" before acking): the same records come again.
    again = await c1.read(4)
    assert [d.id for d in again] == [d.id for d in first] and all(d.redelivered for d in again)
    assert await c1.ack([first[0].id, first[1].id]) == 2
    rest = await c1.read(10)
    assert [d.record["request_id"] for d in rest] == [r.request_id for r in recs[2:]]
    assert [d.redelivered for d in rest] == [True, True] + [False] * 6
    assert await c1.ack([d.id for d in rest]) == 8
    assert await c1.read(10) == [] and await c1.pending_count() == 0

    # A dead consumer's unacknowledged records are taken over by another one (XAUTOCLAIM).
    more = [record(account, credits=100 + i) for i in range(3)]
    for rec in more:
        await ledger.settle(rec)
    taken = await c1.read(3)
    assert [d.record["request_id"] for d in taken] == [r.request_id for r in more]
    c2_patient = UsageExporter(redis_client, account, "billing", "c2", min_idle_ms=3_600_000)
    assert await c2_patient.read(5) == []  # not idle long enough to be taken over
    c2 = UsageExporter(redis_client, account, "billing", "c2", min_idle_ms=0)
    claimed = await c2.read(5)
    assert sorted(d.id for d in claimed) == sorted(d.id for d in taken) and all(d.redelivered for d in claimed)
    assert await c2.ack([d.id for d in claimed]) == 3 and await c1.pending_count() == 0

    # Deduplicating by request_id turns every delivery above into each charge exactly once.
    billed: dict[str, str] = {}
    for d in first + again + rest + taken + claimed:
        billed.setdefault(d.record["request_id"], d.record["credits"])
    assert billed == {r.request_id: format_credits(r.credits) for r in recs + more}

    # A second group is independent: it gets everything again.
    audit = UsageExporter(redis_client, account, "audit", "a1")
    await audit.ensure_group("0")
    assert len(await audit.read(100)) == 13


async def test_cli_export_prints_json_lines_and_acknowledges(
    redis_client: aioredis.Redis, redis_url: str, account: str
) -> None:
    recs = [record(account, credits=1_000_000 + i) for i in range(7)]
    for rec in recs:
        await RedisLedger(redis_client).settle(rec)
    base = ("usage", "export", "--account", account, "--group", "billing")

    peek = cli(redis_url, *base, "--count", "3", "--no-ack")
    assert peek.returncode == 0, peek.stderr
    lines = [json.loads(line) for line in peek.stdout.splitlines()]
    assert [x["request_id"] for x in lines] == [r.request_id for r in recs[:3]]
    assert lines[0]["credits"] == "1.000000" and lines[0]["input_tokens"] == 10 and lines[0]["redelivered"] is False
    assert set(lines[0]) == set(RECORD_FIELDS) | {"id", "ts", "redelivered"}

    out = cli(redis_url, *base, "--count", "5")  # the 3 unacked come again, then 2 new; all acked
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["request_id"] for x in got] == [r.request_id for r in recs[:5]]
    assert [x["redelivered"] for x in got] == [True] * 3 + [False] * 2
    last = [json.loads(line) for line in cli(redis_url, *base, "--count", "100").stdout.splitlines()]
    assert [x["request_id"] for x in last] == [r.request_id for r in recs[5:]]
    assert cli(redis_url, *base).stdout == ""
    assert (await redis_client.xpending(ks.usage_stream(account), "billing"))["pending"] == 0
