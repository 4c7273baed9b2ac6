"""One hot account: admission and settlement for a single account at full speed from several
processes against one redis-server, and what that costs Redis. All of an account's keys share
its hash slot (the scripts are atomic per account), so one Redis core carries all of one
account's traffic whatever the number of sidecars: requests per Redis CPU second is that
account's ceiling.

Each worker process runs `--concurrency` loops of place_hold then settle over one pipelined
connection (the sidecar's own ledger, store/redis_ledger.py) for `--duration` seconds. Redis's
CPU comes from its own counters (INFO cpu, main thread and I/O); the run checks conservation at
the end (balance moved by exactly the settled charges, nothing held). `--baseline REF` runs the
scripts of another commit the same way, after the working tree's.

    .venv/bin/python bench/hot_account.py [--processes 3] [--duration 10] [--profile plain] [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from procs import redis_server
from redis_scripts import CHARGE, DAY, HOLD, KEY_CONTROLS, MONTH, PROFILES, record, sources_at

from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.ledger import HoldRequest
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store import redis_ledger
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

ACCOUNT = "hot"
BALANCE = 10**15


async def worker(port: int, wid: int, duration: float, concurrency: int, sources: dict[str, str] | None) -> int:
    client = aioredis.Redis(port=port)
    if sources:
        redis_ledger.register = lambda redis, script: redis.register_script(sources[script])  # type: ignore[assignment]
    ledger = RedisLedger(client, autopipeline=True)
    done = 0
    deadline = time.monotonic() + duration

    async def loop(lane: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline:
            rid = f"req_{wid}_{lane}_{i}"
            now = int(time.time() * 1000)
            hold = HoldRequest(ACCOUNT, rid, HOLD, now, now + 60_000, DAY, MONTH, "key_bench", "m", 500)
            result = await ledger.place_hold(hold)
            assert result.code is None, result
            assert (await ledger.settle(record(ACCOUNT, rid, now))).applied
            done += 1
            i += 1

    await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
    await ledger.aclose()
    await client.aclose()
    return done


async def redis_cpu_s(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def prepare(port: int, profile: str) -> None:
    client = aioredis.Redis(port=port)
    await client.flushall()
    await client.hset(ks.account(ACCOUNT), "balance", BALANCE)
    if PROFILES[profile]:
        await RedisSettingsStore(client).patch(ACCOUNT, SettingsPatch.parse(PROFILES[profile]))
    if profile in KEY_CONTROLS:
        await client.hset(ks.key_controls(ACCOUNT, "key_bench"), mapping=KEY_CONTROLS[profile].to_hash())  # type: ignore[arg-type]
    await client.aclose()


async def measure(port: int) -> tuple[float, dict[str, int]]:
    client = aioredis.Redis(port=port)
    cpu = await redis_cpu_s(client)
    balance, held = await client.hmget(ks.account(ACCOUNT), "balance", "held")
    await client.aclose()
    return cpu, {"balance": int(balance or 0), "held": int(held or 0)}


def one_run(port: int, args: argparse.Namespace, sources_file: str | None) -> dict[str, Any]:
    uvloop.run(prepare(port, args.profile))
    cpu_before, _ = uvloop.run(measure(port))
    cmd = [sys.executable, __file__, "--worker", "--port", str(port), "--duration", str(args.duration)]
    cmd += ["--concurrency", str(args.concurrency)]
    if sources_file:
        cmd += ["--sources", sources_file]
    started = time.monotonic()
    procs = [subprocess.Popen([*cmd, "--id", str(i)], stdout=subprocess.PIPE, text=True) for i in range(args.processes)]
    counts = [int(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.monotonic() - started
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    cpu_after, ledger = uvloop.run(measure(port))
    n = sum(counts)
    assert ledger == {"balance": BALANCE - n * CHARGE, "held": 0}, ("conservation", ledger, n)
    cpu = cpu_after - cpu_before
    return {
        "requests": n,
        "requests_per_s": n / args.duration,
        "redis_cores_busy": cpu / wall,
        "redis_us_per_request": cpu * 1e6 / n,
        "requests_per_redis_core_s": n / cpu,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="admission+settlement loops per process")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--profile", choices=sorted(PROFILES), default="plain")
    p.add_argument("--baseline", metavar="GIT_REF")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--sources", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        sources = json.loads(Path(args.sources).read_text()) if args.sources else None
        print(uvloop.run(worker(args.port, args.id, args.duration, args.concurrency, sources)))
        return 0
    variants: list[tuple[str, str | None]] = [("working tree", None)]
    with redis_server() as port:
        if args.baseline:
            path = Path(f"/tmp/hot-account-{args.baseline}.json")
            path.write_text(json.dumps(sources_at(args.baseline)))
            variants.append((args.baseline, str(path)))
        rows = [(label, one_run(port, args, sources)) for label, sources in variants]
    print(
        f"one account, profile {args.profile}, {args.processes} processes x {args.concurrency} loops, {args.duration:g} s"
    )
    print("scripts      | req/s  | Redis cores busy | Redis us/req | req/s per Redis core")
    for label, r in rows:
        print(
            f"{label[:12]:12} | {r['requests_per_s']:6.0f} | {r['redis_cores_busy']:16.2f} | "
            f"{r['redis_us_per_request']:12.1f} | {r['requests_per_redis_core_s']:20.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
