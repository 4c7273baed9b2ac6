"""The settlement journal on a real Redis: settlements that cannot reach the store are fsynced
locally and replayed once; replay is idempotent, keeps its order, stops at the first store
failure, keeps what was appended meanwhile, and never drops a line it cannot read.

"Store down" is real too: a RedisLedger whose client points at a port nobody listens on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from critique_sidecar.core.errors import StoreUnavailable
from critique_sidecar.core.ledger import HoldRequest, SettleResult, UsageRecord
from critique_sidecar.devtools.stack import free_port, redis_binary, wait_until
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.journal import JournalingLedger, SettlementJournal
from critique_sidecar.store.redis_ledger import RedisLedger

GRANT = 5_000_000
HOLD = 40_000
NOW_MS = 1_795_000_000_000


def usage(account: str, request_id: str, credits: int = 1234) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, account=account, key_id="key_j", model="deepseek/deepseek-v4-flash",
        input_tokens=10, output_tokens=20, credits=credits, usd="0.0001234", price_version="v1",
        opt_in=False, estimated=False, status="ok", latency_ms=5, ts_ms=NOW_MS, day="2026-11-26", month="2026-11",
    )  # fmt: skip


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    # as the sidecar connects (app.connect_redis): one quick retry, no backoff
    client = aioredis.Redis(
        port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 1)
    )
    yield client
    await client.aclose()


@dataclasses.dataclass
class Env:
    redis: aioredis.Redis
    account: str
    journal: SettlementJournal
    down: JournalingLedger  # the sidecar while Redis is unreachable
    up: JournalingLedger  # the same journal once Redis is back
    live: RedisLedger

    async def hold(self, request_id: str) -> None:
        result = await self.live.place_hold(
            HoldRequest(self.account, request_id, HOLD, NOW_MS, NOW_MS + 10**9, "2026-11-26", "2026-11")
        )
        assert result.code is None

    async def state(self) -> tuple[int, int, list[str]]:
        balance, held = await self.redis.hmget(ks.account(self.account), "balance", "held")
        rows: Any = await self.redis.xrange(ks.usage_stream(self.account))
        ids = [f[b"request_id"].decode() for _, f in rows]
        return int(balance or 0), int(held or 0), ids


@pytest.fixture
async def env(redis_client: aioredis.Redis, dead_redis: aioredis.Redis, account: str, tmp_path: Path) -> Env:
    await redis_client.hset(ks.account(account), "balance", GRANT)
    journal = SettlementJournal(tmp_path / "journal.jsonl")
    live = RedisLedger(redis_client)
    return Env(
        redis_client,
        account,
        journal,
        JournalingLedger(RedisLedger(dead_redis), journal),
        JournalingLedger(live, journal),
        live,
    )


async def test_settlement_while_down_is_journaled_fsynced_and_replayed_once(env: Env) -> None:
    await env.hold("req_a")
    result = await env.down.settle(usage(env.account, "req_a"))
    assert result == SettleResult(credits=1234, applied=True)  # the client is told its charge
    lines = env.journal.path.read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["req_a"]
    assert await env.state() == (GRANT, HOLD, [])  # nothing reached Redis; the hold is still open

    assert await env.down.replay() == 0  # store still down: nothing replayed, nothing lost
    assert env.journal.depth() == 1

    assert await env.up.replay() == 1
    assert not env.journal.path.exists()
    assert await env.state() == (GRANT - 1234, 0, ["req_a"])
    assert await env.up.replay() == 0


async def test_replaying_the_same_records_again_charges_nothing_more(env: Env) -> None:
    for rid in ("req_1", "req_2", "req_3"):
        await env.hold(rid)
        await env.down.settle(usage(env.account, rid, credits=1000))
    copy = env.journal.path.read_bytes()
    assert await env.up.replay() == 3
    after_first = await env.state()
    assert after_first == (GRANT - 3000, 0, ["req_1", "req_2", "req_3"])

    env.journal.path.write_bytes(copy)  # e.g. a crash between settling and truncating
    assert await env.up.replay() == 3
    assert await env.state() == after_first and not env.journal.path.exists()


async def test_a_settlement_that_reached_redis_before_failing_is_not_charged_twice(env: Env) -> None:
    """Timeout after Redis applied the script: the sidecar journals it anyway."""
    await env.hold("req_t")
    assert (await env.live.settle(usage(env.account, "req_t"))).applied
    env.journal.append(usage(env.account, "req_t"))
    assert await env.up.replay() == 1
    assert await env.state() == (GRANT - 1234, 0, ["req_t"])


async def test_replay_stops_at_the_first_store_failure_and_keeps_order(env: Env) -> None:
    class FailsOnSecond:
        def __init__(self, inner: RedisLedger) -> None:
            self.inner, self.calls = inner, 0

        async def settle(self, record: UsageRecord) -> SettleResult:
            self.calls += 1
            if self.calls == 2:
                raise StoreUnavailable("ConnectionError")
            return await self.inner.settle(record)

    for rid in ("req_x", "req_y", "req_z"):
        await env.down.settle(usage(env.account, rid, credits=100))
    flaky = JournalingLedger(FailsOnSecond(env.live), env.journal)  # type: ignore[arg-type]
    assert await flaky.replay() == 1
    assert [r.request_id for r in env.journal.pending()] == ["req_y", "req_z"]
    assert await env.up.replay() == 2
    assert (await env.state())[2] == ["req_x", "req_y", "req_z"]


async def test_settlements_journaled_during_a_replay_are_kept(env: Env) -> None:
    """A settlement that fails (and is journaled) while a replay awaits Redis is kept: the
    replay removes only what it read."""
    gate = asyncio.Event()

    class Gated:
        async def settle(self, record: UsageRecord) -> SettleResult:
            await gate.wait()
            return await env.live.settle(record)

    await env.down.settle(usage(env.account, "req_old", credits=10))
    replaying = asyncio.create_task(JournalingLedger(Gated(), env.journal).replay())  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the replay has read the journal and waits on the store
    for _ in range(3):
        await asyncio.sleep(0)
    await env.down.settle(usage(env.account, "req_new", credits=20))  # another request, store still flaky
    gate.set()
    assert await replaying == 1
    assert [r.request_id for r in env.journal.pending()] == ["req_new"]
    assert await env.up.replay() == 1
    assert await env.state() == (GRANT - 30, 0, ["req_old", "req_new"])


async def test_a_torn_line_is_set_aside_and_never_glued_to_the_next_record(env: Env) -> None:
    await env.down.settle(usage(env.account, "req_before", credits=5))
    with open(env.journal.path, "ab") as f:
        f.write(orjson.dumps(dataclasses.asdict(usage(env.account, "req_torn")))[:57])  # a crash mid-write
    await env.down.settle(usage(env.account, "req_after", credits=7))
    assert [r.request_id for r in env.journal.pending()] == ["req_before", "req_after"]

    assert await env.up.replay() == 2
    assert not env.journal.path.exists()
    unreadable = env.journal.aside("unreadable").read_bytes().splitlines()
    assert len(unreadable) == 1 and unreadable[0].startswith(b'{"request_id":"req_torn"')
    assert await env.state() == (GRANT - 12, 0, ["req_before", "req_after"])


async def test_a_record_the_store_rejects_is_set_aside_and_does_not_block_the_rest(env: Env) -> None:
    class RejectsOne:
        async def settle(self, record: UsageRecord) -> SettleResult:
            if record.request_id == "req_bad":
                raise ValueError("cannot settle this one")
            return await env.live.settle(record)

    for rid in ("req_ok1", "req_bad", "req_ok2"):
        await env.down.settle(usage(env.account, rid, credits=1))
    assert await JournalingLedger(RejectsOne(), env.journal).replay() == 3  # type: ignore[arg-type]
    assert not env.journal.path.exists()
    [rejected] = env.journal.aside("rejected").read_bytes().splitlines()
    assert json.loads(rejected)["request_id"] == "req_bad"
    assert (await env.state())[2] == ["req_ok1", "req_ok2"]


async def test_concurrent_settlements_while_down_each_get_one_whole_line(env: Env) -> None:
    ids = [f"req_c{i}" for i in range(60)]
    results = await asyncio.gather(*(env.down.settle(usage(env.account, rid, credits=3)) for rid in ids))
    assert all(r.applied for r in results)
    assert sorted(r.request_id for r in env.journal.pending()) == sorted(ids)
    assert await env.up.replay() == 60
    balance, held, recorded = await env.state()
    assert balance == GRANT - 180 and held == 0 and sorted(recorded) == sorted(ids)


async def test_replay_forever_survives_an_unexpected_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    await env.down.settle(usage(env.account, "req_f", credits=9))
    real_read, failures = env.journal.read, list[int]()

    def read_fails_once() -> tuple[list[UsageRecord], list[bytes], int]:
        if not failures:
            failures.append(1)
            raise PermissionError("journal unreadable for a moment")
        return real_read()

    monkeypatch.setattr(env.journal, "read", read_fails_once)
    task = asyncio.create_task(env.up.replay_forever(interval_s=0.05))
    try:
        for _ in range(200):
            if not env.journal.path.exists():
                break
            await asyncio.sleep(0.05)  # polling a condition with a deadline (200 x 50 ms)
        assert failures and not env.journal.path.exists()
        assert not task.done()  # still running after the error
    finally:
        task.cancel()
    assert (await env.state())[2] == ["req_f"]


# --- settlements Redis refuses -------------------------------------------------------------------


async def test_a_wrongtype_key_is_a_rejection_not_an_outage_and_changes_nothing(env: Env) -> None:
    await env.hold("req_wt")
    await env.redis.delete(ks.usage_stream(env.account))
    await env.redis.set(ks.usage_stream(env.account), "not a stream")  # a hand-made mess
    result = await env.up.settle(usage(env.account, "req_wt", credits=77))
    assert result == SettleResult(credits=77, applied=False)
    assert not env.journal.path.exists()  # not journaled as "store unavailable": nothing to retry
    [rejected] = env.journal.aside("rejected").read_bytes().splitlines()
    assert json.loads(rejected)["request_id"] == "req_wt"
    balance, held = await env.redis.hmget(ks.account(env.account), "balance", "held")
    assert (balance, held) == (str(GRANT).encode(), str(HOLD).encode())  # validated before anything changed: hold kept


async def test_a_rejected_journal_record_never_blocks_replay_of_later_ones(env: Env) -> None:
    for rid in ("req_1", "req_bad", "req_2"):
        await env.hold(rid)
    await env.down.settle(usage(env.account, "req_1", credits=1))
    await env.down.settle(usage(env.account, "req_bad", credits=-5))  # the script refuses a negative charge
    await env.down.settle(usage(env.account, "req_2", credits=2))
    assert await env.up.replay() == 3
    assert not env.journal.path.exists()
    [rejected] = env.journal.aside("rejected").read_bytes().splitlines()
    assert json.loads(rejected)["request_id"] == "req_bad"
    balance, held, ids = await env.state()
    assert (balance, held, ids) == (GRANT - 3, HOLD, ["req_1", "req_2"])  # req_bad's hold untouched


@pytest.mark.parametrize(
    "field, value",
    [("credits", -1), ("credits", 2**53), ("input_tokens", 10**18), ("output_tokens", -3), ("credits", 1.5)],
)
async def test_settle_lua_validates_before_it_changes_anything(env: Env, field: str, value: object) -> None:
    await env.hold("req_v")
    before = await env.redis.hgetall(ks.account(env.account))
    bad = dataclasses.replace(usage(env.account, "req_v"), **{field: value})  # type: ignore[arg-type]
    result = await env.up.settle(bad)
    assert result.applied is False
    assert await env.redis.hgetall(ks.account(env.account)) == before
    held: Any = await env.redis.hget(ks.holds(env.account), "req_v")
    assert held.split(b":")[0] == str(HOLD).encode()
    assert await env.redis.exists(ks.settled(env.account, "req_v"), ks.usage_stream(env.account)) == 0


@pytest.fixture
def replica_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A read-only replica of the test Redis: what a client still pointed at a demoted master sees."""
    import redis as sync_redis

    master_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    port = free_port()
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(tmp_path), "--replicaof", "127.0.0.1", master_port]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        # Writes are refused from the start, synced or not (replica-read-only).
        wait_until(lambda: sync_redis.Redis(port=port).ping(), "replica", proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize("autopipeline", [True, False])
async def test_a_read_only_replica_is_an_outage_to_journal_not_a_rejection(
    env: Env, replica_url: str, autopipeline: bool
) -> None:
    """READONLY (a failover moved the master) is "not now": the settlement is journaled and
    replayed, never set aside. redis-py strips the code from that reply's message, so this
    guards the classification by the reply's code rather than its text."""
    await env.hold("req_ro")
    replica = aioredis.Redis.from_url(replica_url)
    ledger = RedisLedger(replica, autopipeline=autopipeline)
    ledger._registered.add(env.account)  # its once-per-process registry write was done before the failover
    try:
        with pytest.raises(StoreUnavailable):
            await ledger.settle(usage(env.account, "req_ro"))
        result = await JournalingLedger(ledger, env.journal).settle(usage(env.account, "req_ro"))
    finally:
        await ledger.aclose()
        await replica.aclose()
    assert result.credits == 1234  # journaled: it will be charged
    assert not env.journal.aside("rejected").exists()
    [line] = env.journal.path.read_bytes().splitlines()
    assert json.loads(line)["request_id"] == "req_ro"
    assert await env.up.replay() == 1  # the master takes it: charged once
    assert (await env.state())[0] == GRANT - 1234
