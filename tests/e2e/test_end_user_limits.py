"""Per-end-user limits through both front doors with the openai SDK: an end user's own cap set
through the settings route, the account's default for every other end user, the header naming
the end user over the body; the SDK's exception names `end_user:<limit>`; the records show no end
user settled more than its cap."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from critique_sidecar.devtools.stack import Stack

from .helpers import FrontDoor, client, usage_records

pytestmark = pytest.mark.slow

MODEL = "deepseek/deepseek-v4-flash"
DEFAULT = Decimal("0.01")  # each end user's daily credits: a few requests


def ask(sdk: openai.OpenAI, user: str, header: str | None = None) -> None:
    sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=20,
        user=user,
        extra_headers={"x-critique-end-user": header} if header else None,
    )


def test_end_users_are_capped_one_by_one(stack: Stack, front_door: FrontDoor, account: str) -> None:
    owner = stack.create_key(account, "read:inference,write:inference,admin:inference")["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", "100")
    stack.cli("settings", "set", "--account", account, "--end-user-daily-credit-cap", str(DEFAULT))
    put = httpx.put(
        front_door.base_url + "/api/settings/inference-api/end-users",
        params={"end_user": "blocked"},
        json={"daily_credit_cap": "0"},
        headers={"authorization": f"Bearer {owner}"},
    )
    assert put.status_code == 200, put.text
    assert put.json()["effective"]["daily_credit_cap"] == "0.000000"
    sdk = client(front_door, owner)

    with pytest.raises(openai.APIStatusError) as blocked:
        ask(sdk, "blocked")
    e = blocked.value
    assert (e.status_code, e.code, e.param) == (429, "end_user_daily_credit_cap_reached", "end_user:daily_credit_cap")
    assert e.response.headers["x-critique-limit"] == "end_user:daily_credit_cap"
    # The header names the end user and wins over the body's field.
    with pytest.raises(openai.APIStatusError) as by_header:
        ask(sdk, "anyone", header="blocked")
    assert by_header.value.code == "end_user_daily_credit_cap_reached"

    # Another end user runs under the account's default until it is spent; others go on.
    answered = 0
    while True:
        try:
            ask(sdk, "looping")
        except openai.APIStatusError as refused:
            assert refused.code == "end_user_daily_credit_cap_reached"
            break
        answered += 1
        assert answered < 100, "the end user's daily cap never stopped it"
    assert answered >= 1
    ask(sdk, "someone-else")
    sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=20)  # no end user
    spent = sum(
        Decimal(int(r["credits"])) / 1_000_000 for r in usage_records(stack, account) if r["end_user"] == "looping"
    )
    assert 0 < spent <= DEFAULT
