"""Spend rates through both front doors with the openai SDK: an agent loop calling as fast as it
can is stopped by the account's credits-per-minute limit, and the SDK's exception names the limit
(`e.code`, `e.param`, the X-Critique-Limit header); a key's own spend rate stops that key only;
GET /api/settings/inference-api/limits shows what was spent against each limit. The ledger's
records show no UTC minute ever settled more than the limit."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import httpx
import openai
import pytest

from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace as ks

from .helpers import FrontDoor, client, funded_key

pytestmark = pytest.mark.slow

MODEL = "deepseek/deepseek-v4-flash"
LIMIT = Decimal("0.01")  # a few of the requests below, far below the balance


def loop_until_refused(sdk: openai.OpenAI) -> tuple[int, openai.APIStatusError]:
    """The runaway agent: the same call again and again until the product says no."""
    for done in range(200):
        try:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=20)
        except openai.APIStatusError as e:
            return done, e
    raise AssertionError("200 calls and the spend rate never stopped the loop")


def settled_per_minute(stack: Stack, account: str) -> dict[int, Decimal]:
    import redis

    with redis.Redis.from_url(str(stack.redis_url)) as r:
        rows = r.xrange(ks.usage_stream(account))
    out: dict[int, Decimal] = defaultdict(Decimal)
    at = 0
    for _, f in rows:  # in settlement order; a late one counts in the newest minute, as the ledger does
        at = max(at, int(f[b"ts_ms"]) // 60_000)
        out[at] += Decimal(int(f[b"credits"])) / 1_000_000
    return out


def test_a_runaway_loop_is_stopped_and_told_which_limit(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "100")
    stack.cli("settings", "set", "--account", account, "--credits-per-minute", str(LIMIT))
    done, e = loop_until_refused(client(front_door, key))
    assert done >= 1  # the limit lets some through, then stops the loop
    assert (e.status_code, e.code, e.param) == (429, "credits_per_minute_reached", "account:credits_per_minute")
    assert e.response.headers["x-critique-limit"] == "account:credits_per_minute"
    assert 1 <= int(e.response.headers["retry-after"]) <= 60
    assert "x-should-retry" not in e.response.headers  # lifts within a retry's wait
    assert all(spent <= LIMIT for spent in settled_per_minute(stack, account).values())

    got = httpx.get(
        front_door.base_url + "/api/settings/inference-api/limits", headers={"authorization": f"Bearer {key}"}
    )
    assert got.status_code == 200, got.text
    minute = got.json()["account_limits"]["credits_per_minute"]
    assert minute["cap"] == f"{LIMIT:.6f}" and Decimal(minute["spent"]) <= LIMIT


def test_a_keys_spend_rate_stops_that_key_only(stack: Stack, front_door: FrontDoor, account: str) -> None:
    runaway, calm = stack.create_key(account), stack.create_key(account)
    stack.cli("credits", "grant", "--account", account, "--credits", "100")
    stack.cli("keys", "set-limits", runaway["key_id"], "--credits-per-minute", str(LIMIT))
    _, e = loop_until_refused(client(front_door, runaway["key"]))
    assert (e.status_code, e.code, e.param) == (429, "key_credits_per_minute_reached", "key:credits_per_minute")
    assert e.response.headers["x-critique-limit"] == "key:credits_per_minute"
    other = client(front_door, calm["key"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    assert other.choices  # the account and its other keys go on
    got = httpx.get(
        front_door.base_url + "/api/settings/inference-api/limits",
        headers={"authorization": f"Bearer {runaway['key']}"},
    )
    assert got.status_code == 200 and got.json()["key_id"] == runaway["key_id"]
    assert got.json()["key_limits"]["credits_per_minute"]["cap"] == f"{LIMIT:.6f}"
