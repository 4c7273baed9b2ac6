"""Redis CPU per admission and per settlement: the server's own time in the two ledger scripts
(`INFO commandstats`, cmdstat_evalsha usec_per_call), per account profile:

- plain:   an account nobody configured (no caps, no limits, no notifications): the common case
- caps:    daily and monthly credit caps, a daily request cap and a reserve floor
- limits:  caps plus account and key rate limits, a key daily cap and max_concurrent
- notify:  caps plus budget notifications (thresholds and a low-balance level)

Each phase resets the statistics, runs only one script, and reads them back, so the two
scripts are measured apart. `--baseline REF` also runs the scripts as they were at a git ref
(same KEYS/ARGV/reply positions assumed), alternating with the working tree's in the same
Redis, and each figure is the best of `--rounds`. Starts its own redis-server on a free port.

    .venv/bin/python bench/redis_scripts.py [--requests 2000] [--baseline 58e2fc9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from procs import redis_server

from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.core.ledger import HoldRequest, UsageRecord
from critique_sidecar.devtools.stack import REPO
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store import redis_ledger
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.settings_store import RedisSettingsStore

DAY, MONTH = "2026-11-26", "2026-11"
HOLD = 2_000  # micro-credits per request
CHARGE = 1_500
PROFILES: dict[str, dict[str, Any]] = {
    "plain": {},
    "caps": {
        "daily_credit_cap": "1000000",
        "monthly_credit_cap": "1000000",
        "daily_request_cap": 1_000_000,
        "reserve_credits_for_review": "1",
    },
    "limits": {
        "daily_credit_cap": "1000000",
        "monthly_credit_cap": "1000000",
        "daily_request_cap": 1_000_000,
        "requests_per_minute": 1_000_000,
        "tokens_per_minute": 1_000_000_000,
        "max_concurrent": 100_000,
    },
    "notify": {
        "daily_credit_cap": "1000000",
        "monthly_credit_cap": "1000000",
        "daily_request_cap": 1_000_000,
        "notify_webhook_url": "https://hooks.example.com/budget",
        "notify_thresholds_percent": [50, 80, 100],
        "notify_low_balance_credits": "1",
    },
}
KEY_CONTROLS = {"limits": KeyControls(daily_credit_cap=10**12, requests_per_minute=1_000_000, max_concurrent=100_000)}


def record(account: str, rid: str, now_ms: int) -> UsageRecord:
    return UsageRecord(
        request_id=rid, account=account, key_id="key_bench", model="deepseek/deepseek-v4-flash",
        input_tokens=120, output_tokens=380, credits=CHARGE, usd="0.000015", price_version="v1",
        opt_in=False, estimated=False, status="ok", latency_ms=420, ts_ms=now_ms, day=DAY, month=MONTH,
    )  # fmt: skip


async def evalsha_usec(client: aioredis.Redis) -> tuple[int, float]:
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0))


def sources_at(ref: str) -> dict[str, str]:
    """The two scripts as the tree at `ref` composed them (its own store/scripts.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", ref, "src"], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        code = (
            "import json; from critique_sidecar.store.scripts import lua_source; "
            "print(json.dumps({n: lua_source(n) for n in ('place_hold', 'settle')}))"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    import json

    return dict(json.loads(out.stdout))


async def profile(
    client: aioredis.Redis, name: str, n: int, sources: dict[str, str] | None = None
) -> tuple[float, float]:
    """(admission us, settlement us) of Redis CPU per call for one account profile."""
    await client.flushall()
    account = f"bench-{name}"
    await client.hset(ks.account(account), "balance", 10**15)
    if PROFILES[name]:
        await RedisSettingsStore(client).patch(account, SettingsPatch.parse(PROFILES[name]))
    if name in KEY_CONTROLS:
        await client.hset(ks.key_controls(account, "key_bench"), mapping=KEY_CONTROLS[name].to_hash())  # type: ignore[arg-type]
    if sources is None:
        ledger = RedisLedger(client)
    else:
        original = redis_ledger.register
        redis_ledger.register = lambda redis, script: redis.register_script(sources[script])  # type: ignore[assignment]
        try:
            ledger = RedisLedger(client)
        finally:
            redis_ledger.register = original  # type: ignore[assignment]
    now = int(time.time() * 1000)
    rids = [f"req_{name}_{i:08d}" for i in range(n)]
    await client.config_resetstat()
    for i, rid in enumerate(rids):
        hold = HoldRequest(account, rid, HOLD, now + i, now + 60_000 + i, DAY, MONTH, "key_bench", "m", 500)
        result = await ledger.place_hold(hold)
        assert result.code is None, result
    hold_calls, hold_usec = await evalsha_usec(client)
    await client.config_resetstat()
    for i, rid in enumerate(rids):
        assert (await ledger.settle(record(account, rid, now + i))).applied
    settle_calls, settle_usec = await evalsha_usec(client)
    assert hold_calls >= n and settle_calls >= n, (hold_calls, settle_calls)
    await ledger.aclose()
    return hold_usec, settle_usec


async def run(port: int, n: int, rounds: int, baseline: str | None) -> list[tuple[str, str, float, float]]:
    client = aioredis.Redis(port=port)
    variants: list[tuple[str, dict[str, str] | None]] = [("working tree", None)]
    if baseline:
        variants.append((baseline, sources_at(baseline)))
    rows = []
    for name in PROFILES:
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for label, sources in variants:
                await profile(client, name, n // 10, sources)  # warm up (script cache, allocator)
                hold, settle = await profile(client, name, n, sources)
                old = best.get(label, (float("inf"), float("inf")))
                best[label] = (min(old[0], hold), min(old[1], settle))
        rows += [(name, label, *best[label]) for label, _ in variants]
    await client.aclose()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per profile and round (default 2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the best (default 3)")
    p.add_argument("--baseline", metavar="GIT_REF", help="also measure the scripts as they were at this ref")
    args = p.parse_args()
    with redis_server() as port:
        rows = uvloop.run(run(port, args.requests, args.rounds, args.baseline))
    print(f"{'profile':8} | {'scripts':12} | admission us | settlement us | per request us")
    for name, label, hold, settle in rows:
        print(f"{name:8} | {label[:12]:12} | {hold:12.2f} | {settle:13.2f} | {hold + settle:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
