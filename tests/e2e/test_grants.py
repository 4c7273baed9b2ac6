"""Credit grants through both front doors with the openai SDK: a promotional grant that expires
is spent before the account's paid credits, the usage record's `paid_by` names it, and the
operator's grant list shows what is left of each and when it expires."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from critique_sidecar.core.money import format_credits
from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace as ks

from .helpers import FrontDoor, client, funded_key

pytestmark = pytest.mark.slow

MODEL = "deepseek/deepseek-v4-flash"


def test_an_expiring_promotional_grant_is_spent_before_paid_credits(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    import redis

    key = funded_key(stack, account, "10")  # paid, no expiry: g1
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    out = stack.cli("credits", "grant", "--account", account, "--credits", "2", "--category", "promotional",
                    "--expires-at", expires.isoformat().replace("+00:00", "Z"))  # fmt: skip
    assert "(grant g2)" in out
    sdk = client(front_door, key)
    for _ in range(2):
        done = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
        assert done.choices
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        records = [f for _, f in r.xrange(ks.usage_stream(account))]
    assert len(records) == 2
    spent = 0
    for f in records:
        charge = int(f[b"credits"])
        assert charge > 0
        assert f[b"paid_by"].decode() == f"g2:{charge}"  # all of it from the promotional grant
        spent += charge
    grants = json.loads(stack.cli("credits", "grants", "--account", account, "--json"))["data"]
    assert [(g["id"], g["category"]) for g in grants] == [("g2", "promotional"), ("g1", "paid")]
    assert grants[0]["remaining"] == format_credits(2_000_000 - spent) and grants[0]["held"] == "0.000000"
    assert grants[0]["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert grants[1]["remaining"] == "10.000000" and grants[1]["expires_at"] is None
