"""The backlog gauges (observability/backlogs.py) on a real Redis: the dead-letter list's length,
and the usage records the push group has not had acknowledged (never delivered, delivered and
unacknowledged, and every record of a stream the group has not reached yet)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from critique_sidecar.config import Config
from critique_sidecar.observability.backlogs import sample_once
from critique_sidecar.observability.metrics import Metrics
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.usage_records import USAGE_ACCOUNTS

GROUP = "cloudevents"


def gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_dead_letters_and_the_push_backlog_are_counted(redis_client: Any, account: str) -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    config = Config(usage_push_url="http://push.example.test/events", usage_push_group=GROUP)
    await sample_once(redis_client, metrics, config)
    dead0, backlog0 = gauge(metrics, "critique_notify_dead_letters"), gauge(metrics, "critique_usage_push_backlog")

    await redis_client.lpush(ks.NOTIFY_DEAD, b"{}", b"{}")
    pushed, unreached = ks.usage_stream(account), ks.usage_stream(account + "-b")
    await redis_client.sadd(USAGE_ACCOUNTS, account, account + "-b")
    ids = [await redis_client.xadd(pushed, {"n": str(i)}) for i in range(5)]
    await redis_client.xgroup_create(pushed, GROUP, id="0")
    await redis_client.xreadgroup(GROUP, "c1", {pushed: ">"}, count=3)  # 3 delivered, 2 never
    await redis_client.xack(pushed, GROUP, ids[0])  # 1 acknowledged, 2 pending
    for i in range(4):
        await redis_client.xadd(unreached, {"n": str(i)})  # no group yet: all 4 wait
    await sample_once(redis_client, metrics, config)

    assert gauge(metrics, "critique_notify_dead_letters") == dead0 + 2
    assert gauge(metrics, "critique_usage_push_backlog") == backlog0 + 2 + 2 + 4
    await redis_client.ltrim(ks.NOTIFY_DEAD, 2, -1)  # leave the shared Redis as it was


async def test_without_usage_push_only_dead_letters_are_sampled(redis_client: Any) -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    await sample_once(redis_client, metrics, Config())
    assert gauge(metrics, "critique_usage_push_backlog") == 0
    assert gauge(metrics, "critique_notify_dead_letters") == await redis_client.llen(ks.NOTIFY_DEAD)
