"""Scale-out: two sidecar processes behind Envoy (two endpoints of the sidecar_grpc cluster)
share one account's limits. 200 concurrent chat requests against an account whose limits
admit only a few: exactly that few are admitted across both processes, the floor and caps
hold at every sampled instant, and every credit that left the balance is in the records and
in the responses' headers. Run twice: on one Redis, and on a Redis Cluster of three masters
(the sidecars with CRITIQUE_REDIS_CLUSTER=true).

Exactness whatever the interleaving: see tests/e2e/test_concurrency.py (hold H, charge C,
k*(H - C) < H for every k used here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.core.clock import day_window, utc_now
from critique_sidecar.core.money import MICRO, format_credits, parse_credits
from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace as ks

from .faultkit import CHAT_PATH, funded, grpc_port, on_cluster
from .helpers import sidecar_hosts, stack_on, started
from .test_concurrency import CHARGE, HOLD, RAW, watched_burst

pytestmark = pytest.mark.slow

CONCURRENCY = 200
FLOOR = 2 * MICRO

# One atomic read of what admission checks (works on Cluster: one slot per account).
SNAPSHOT = """
local a = redis.call('HMGET', KEYS[1], 'balance', 'held')
local d = redis.call('HMGET', KEYS[2], 'credits', 'admitted')
return {a[1] or '0', a[2] or '0', d[1] or '0', d[2] or '0'}
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    admitted: int
    refusal: str
    grant: int
    flags: dict[str, str] = field(default_factory=dict)
    floor: int = 0
    daily_cap: int | None = None
    request_cap: int | None = None


SCENARIOS = [
    Scenario(
        "floor", 5, "insufficient_credits", FLOOR + 5 * HOLD, {"--reserve-floor": format_credits(FLOOR)}, floor=FLOOR
    ),
    Scenario(
        "daily_credit_cap",
        4,
        "daily_credit_cap_reached",
        100 * MICRO,
        {"--daily-credit-cap": format_credits(4 * HOLD)},
        daily_cap=4 * HOLD,
    ),
    Scenario(
        "daily_request_cap", 6, "daily_request_cap_reached", 100 * MICRO, {"--daily-request-cap": "6"}, request_cap=6
    ),
]


@pytest.fixture(scope="module", params=["redis", "cluster"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"scale-out-{request.param}")
    with stack_on(request.param, workdir, sidecar_count=2) as s, started(s, two_sidecars=True):
        yield s


def store_client(stack: Stack) -> Any:
    if on_cluster(stack):
        return aioredis.RedisCluster.from_url(str(stack.redis_url))
    return aioredis.Redis.from_url(str(stack.redis_url))


class Monitor:
    """Samples the account's ledger atomically while the burst runs; keeps the worst values."""

    def __init__(self, r: Any, account: str) -> None:
        self.keys = [ks.account(account), ks.day(account, day_window(utc_now()))]
        self.script = r.register_script(SNAPSHOT)
        self.min_free: int | None = None  # balance - held
        self.max_day_committed = 0  # day spend + held
        self.max_admitted = 0
        self.samples = 0

    async def sample(self) -> None:
        balance, held, day, admitted = (int(v) for v in await self.script(keys=self.keys))
        self.min_free = balance - held if self.min_free is None else min(self.min_free, balance - held)
        self.max_day_committed = max(self.max_day_committed, day + held)
        self.max_admitted = max(self.max_admitted, admitted)
        self.samples += 1

    async def watch(self, burst: asyncio.Future[Any]) -> None:
        while not burst.done():
            await self.sample()
        await self.sample()


async def burst(stack: Stack, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=60) as http:
        return list(
            await asyncio.gather(*(http.post(CHAT_PATH, content=RAW, headers=headers) for _ in range(CONCURRENCY)))
        )


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_two_sidecars_share_one_accounts_limits(stack: Stack, account: str, sc: Scenario) -> None:
    key = funded(stack, account, format_credits(sc.grant))
    stack.cli("settings", "set", "--account", account, *(x for kv in sc.flags.items() for x in kv))
    ports = {grpc_port(stack, 0), grpc_port(stack, 1)}
    before = {p: h.get("rq_total", 0) for p, h in sidecar_hosts(stack).items()}

    r = store_client(stack)
    try:
        monitor = Monitor(r, account)
        _, statuses, codes, ok = await watched_burst(monitor, burst(stack, key))
        after = {p: h.get("rq_total", 0) for p, h in sidecar_hosts(stack).items()}
        per_sidecar = {p: after[p] - before.get(p, 0) for p in ports}
        report = f"{sc.name} on {'cluster' if on_cluster(stack) else 'redis'}: statuses {dict(statuses)}, codes {dict(codes)}, per sidecar {per_sidecar}"
        print(report)

        assert set(after) == ports and all(n > 0 for n in per_sidecar.values()), report  # both processes took part
        assert len(ok) == sc.admitted, report
        assert codes == {sc.refusal: CONCURRENCY - sc.admitted}, report

        # Never crossed, at any sampled instant.
        assert monitor.samples > 1
        assert monitor.min_free is not None and monitor.min_free >= sc.floor, report
        if sc.daily_cap is not None:
            assert monitor.max_day_committed <= sc.daily_cap, report
        if sc.request_cap is not None:
            assert monitor.max_admitted <= sc.request_cap, report

        # Conservation: balance change = records = headers = admitted x charge.
        balance, held = (int(v or 0) for v in await r.hmget(ks.account(account), "balance", "held"))
        records = [f for _, f in await r.xrange(ks.usage_stream(account))]
        recorded = sum(int(f[b"credits"]) for f in records)
        shown = sum(parse_credits(resp.headers["x-critique-credits-charged"]) for resp in ok)
        assert held == 0 and await r.hlen(ks.holds(account)) == 0
        assert len({f[b"request_id"] for f in records}) == len(records) == sc.admitted
        assert sc.grant - balance == recorded == shown == sc.admitted * CHARGE, report
        assert balance >= sc.floor
    finally:
        await r.aclose()
