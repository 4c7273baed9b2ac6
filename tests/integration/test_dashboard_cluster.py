"""The usage data paths on a real 3-node Redis Cluster: every script and command the dashboard,
the billing export and retention use touches one account's slot (hash tag {a:<account>}) or a
single key, so they run unchanged on Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import RedisCluster

from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.usage_export import UsageExporter
from critique_sidecar.store.usage_query import UsageQuery
from critique_sidecar.store.usage_records import rebuild_registry, registered_accounts
from critique_sidecar.store.usage_retention import UsageRetention

from .clusterkit import redis_cluster
from .usage_kit import NOW, add_old, record


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("dashboard-cluster")) as ports:
        yield f"redis://127.0.0.1:{ports[0]}/0"


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


async def test_usage_paths_on_redis_cluster(cluster: RedisCluster, account: str) -> None:
    others = [f"{account}-{i}" for i in range(6)]  # spread over the cluster's slots
    await add_old(cluster, account, 40, 3)
    ledger = RedisLedger(cluster)
    recs = [record(account, key_id="k1", credits=1000 + i) for i in range(5)]
    for rec in recs:
        assert (await ledger.settle(rec)).applied
    for other in others:
        await ledger.settle(record(other))

    query = UsageQuery(cluster)
    snap = await query.snapshot(account, ["2026-11-25", NOW.strftime("%Y-%m-%d")], NOW.strftime("%Y-%m"))
    assert snap.days[1].total.credits == sum(r.credits for r in recs) and snap.days[1].total.requests == 5
    assert snap.month_credits == sum(r.credits for r in recs) and snap.balance == -sum(r.credits for r in recs)
    page = await query.activity(account, None, 4)
    assert [f["request_id"] for _, f in page.entries] == [r.request_id for r in reversed(recs)][:4] and page.has_more
    rest = await query.activity(account, page.entries[-1][0], 10)
    assert (
        rest.entries[0][1]["request_id"] == recs[0].request_id and len(rest.entries) == 4 and not rest.has_more
    )  # + 3 old
    _, key = await RedisKeyStore(cluster).create(account, ("read:inference",), "named")
    assert (await query.keys(account, [key.key_id, "nope"]))[key.key_id].name == "named"

    exporter = UsageExporter(cluster, account, "billing", "c1", min_idle_ms=0)
    await exporter.ensure_group("0")
    got = await exporter.read(5)
    assert len(got) == 5 and await exporter.ack([d.id for d in got[:3]]) == 3
    taken = await UsageExporter(cluster, account, "billing", "c2", min_idle_ms=0).read(10)
    assert [d.id for d in taken[:2]] == [d.id for d in got[3:]] and taken[0].redelivered

    result = await UsageRetention(cluster, retention_days=30).trim(account)
    assert result.deleted == 3 and result.held_by is None  # the 3 old were acked; the pending ones are recent
    assert set(others) | {account} <= set(await registered_accounts(cluster))
    assert set(others) | {account} <= set(await rebuild_registry(cluster))
    assert await cluster.xlen(ks.usage_stream(account)) == 5
