"""A new limit is one row of core/limit_table.py: in a fresh interpreter, a `monthly_request_cap`
row (and its refusal code) is added before anything else is imported, and then the settings
API's model, the provisioning schema, the CLI flags, the dashboard rows, the refusal with its
retry headers and the admission script on real Redis all know it, with no other change."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PROGRAM = textwrap.dedent(
    """
    import asyncio, json, sys
    from dataclasses import replace
    from datetime import UTC, datetime

    from critique_sidecar.core import errors, limit_table as lt

    row = replace(lt.limit("account", "daily_request_cap"), name="monthly_request_cap",
                  field="monthly_request_cap", window="month", code="monthly_request_cap_reached",
                  retry="next_month", flag="--monthly-request-cap", label="Monthly request cap")
    errors.ERROR_TABLE[row.code] = (429, "rate_limit_error")
    lt.LIMITS = (*lt.LIMITS, row)
    lt.ACCOUNT_LIMITS = (*lt.ACCOUNT_LIMITS, row)
    lt.REFUSALS = {**lt.REFUSALS, row.code: row}

    import redis.asyncio as aioredis
    from critique_sidecar.cli.parser import build_parser
    from critique_sidecar.core.account_settings import SettingsPatch
    from critique_sidecar.core.dashboard_source import DayRollup, RateUsage, UsageSnapshot
    from critique_sidecar.core.ledger import HoldRequest
    from critique_sidecar.core.limits import control_refusal, retry_headers
    from critique_sidecar.provisioning import schemas
    from critique_sidecar.store.redis_ledger import RedisLedger
    from critique_sidecar.store.settings_store import RedisSettingsStore
    from critique_sidecar.web.dashboard import account_limits

    async def main(url, account):
        redis = aioredis.Redis.from_url(url)
        settings = await RedisSettingsStore(redis).patch(account, SettingsPatch.parse({"monthly_request_cap": 2}))
        await redis.hset(f"crt:{{a:{account}}}:acct", "balance", 10**9)
        ledger = RedisLedger(redis)
        codes = []
        for i, day in enumerate(("2026-11-01", "2026-11-02", "2026-11-03")):
            hold = HoldRequest(account, f"req_{i}", 10, 1, 10**13, day, "2026-11")
            codes.append((await ledger.place_hold(hold)).code)
        now = datetime(2026, 11, 3, 12, tzinfo=UTC)
        refusal = control_refusal("monthly_request_cap_reached", "", now)
        month = await redis.hgetall(f"crt:{{a:{account}}}:m:2026-11")
        snap = UsageSnapshot([DayRollup("2026-11-03")], 0, 0, 0, settings, {"admitted": int(month[b"admitted"])})
        args = build_parser().parse_args(["settings", "set", "--account", account, "--monthly-request-cap", "5"])
        print(json.dumps({
            "settings": settings.to_json()["monthly_request_cap"],
            "codes": codes,
            "message": refusal.message,
            "headers": retry_headers("monthly_request_cap_reached", now),
            "schema": "monthly_request_cap" in schemas.Settings.model_fields,
            "flag": args.monthly_request_cap,
            "dashboard": account_limits(snap, RateUsage(), now)["monthly_request_cap"],
        }))
        await ledger.aclose()
        await redis.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_a_new_limit_is_one_row(redis_url: str, account: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, redis_url, account], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen: dict[str, Any] = json.loads(out.stdout)
    assert seen["settings"] == 2
    assert seen["codes"] == [None, None, "monthly_request_cap_reached"]  # counted across days, per month
    assert seen["message"] == "Monthly request cap reached for this account (resets on the 1st, UTC)"
    assert seen["headers"] == {"retry-after": str(27 * 86400 + 12 * 3600), "x-should-retry": "false"}
    assert seen["schema"] and seen["flag"] == "5"
    assert seen["dashboard"]["label"] == "Monthly request cap"
    assert (seen["dashboard"]["spent"], seen["dashboard"]["cap"], seen["dashboard"]["reached"]) == (2, 2, True)
