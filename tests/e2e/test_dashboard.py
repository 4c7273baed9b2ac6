"""The dashboard API end to end: real traffic with the openai SDK through the real Envoy (repo
envoy.yaml) -> sidecar -> fake upstream, then GET /api/dashboard/inference-api through Envoy
agrees with the balance change and with the usage records settlement wrote."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
import openai
import redis

from critique_sidecar.core.money import format_credits
from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.store import keyspace

PROMPT = "Summarize this retry policy in three bullets: canary-7d1f"
FLASH, HY3, NEMOTRON = "deepseek/deepseek-v4-flash", "tencent/hy3-preview", "nvidia/nemotron-3-ultra-550b-a55b"


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=stack.base_url + "/api/v1", max_retries=0, timeout=30)


def balance(stack: Stack, account: str) -> Decimal:
    return Decimal(json.loads(stack.cli("credits", "show", "--account", account, "--json"))["balance"])


def records(stack: Stack, account: str) -> list[tuple[str, dict[str, str]]]:
    with redis.Redis.from_url(str(stack.redis_url), decode_responses=True) as r:
        return list(r.xrange(keyspace.usage_stream(account)))


def wait_records(stack: Stack, account: str, n: int) -> list[tuple[str, dict[str, str]]]:
    wait_until(lambda: len(records(stack, account)) >= n, f"{n} usage records", timeout=15)
    return records(stack, account)


def dashboard(stack: Stack, key: str | None, **params: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(stack.base_url + DASHBOARD_PATH, params=params, headers=headers, timeout=10)


def ok(stack: Stack, key: str, **params: Any) -> dict[str, Any]:
    r = dashboard(stack, key, **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
    return r.json()  # type: ignore[no-any-return]


def counts(row: dict[str, Any]) -> tuple[str, int, int, int]:
    return row["credits"], row["requests"], row["input_tokens"], row["output_tokens"]


def test_dashboard_agrees_with_the_balance_change_and_the_usage_records(stack: Stack, account: str) -> None:
    agent_a = stack.create_key(account, "read:inference,write:inference")
    agent_b = stack.create_key(account, "write:inference")
    reader = stack.create_key(account, "read:inference")["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", "25")
    before = balance(stack, account)

    charged: dict[str, Decimal] = {}  # request id -> the charge header
    plan = [(agent_a, FLASH)] * 3 + [(agent_b, HY3)] * 2 + [(agent_a, NEMOTRON)]
    for key, model in plan:
        raw = sdk(stack, key["key"]).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=40
        )
        charged[raw.headers["x-critique-request-id"]] = Decimal(raw.headers["x-critique-credits-charged"])
    stream = sdk(stack, agent_b["key"]).chat.completions.create(
        model=FLASH, messages=[{"role": "user", "content": PROMPT}], max_tokens=40, stream=True
    )
    assert "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    answer = sdk(stack, agent_a["key"]).responses.with_raw_response.create(
        model=FLASH, input=PROMPT, max_output_tokens=40
    )
    charged[answer.headers["x-critique-request-id"]] = Decimal(answer.headers["x-critique-credits-charged"])

    entries = wait_records(stack, account, len(plan) + 2)
    assert len(entries) == len(plan) + 2
    spent = before - balance(stack, account)
    assert spent > 0

    data = ok(stack, reader, days="7")
    # The dashboard, the balance and the records agree to the micro-credit.
    assert Decimal(data["totals"]["credits"]) == spent
    assert sum(int(f["credits"]) for _, f in entries) == int(spent * 1_000_000)
    for _, f in entries:
        if f["request_id"] in charged:
            assert Decimal(f["credits"]) / 1_000_000 == charged[f["request_id"]]
    assert data["totals"]["requests"] == len(entries)
    assert data["totals"]["input_tokens"] == sum(int(f["input_tokens"]) for _, f in entries)
    assert data["totals"]["output_tokens"] == sum(int(f["output_tokens"]) for _, f in entries)
    assert sum(Decimal(d["credits"]) for d in data["daily"]) == spent and len(data["daily"]) == 7

    def grouped(field: str) -> dict[str, tuple[str, int, int, int]]:
        acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for _, f in entries:
            a = acc[f[field]]
            a[0] += int(f["credits"])
            a[1] += 1
            a[2] += int(f["input_tokens"])
            a[3] += int(f["output_tokens"])
        return {k: (format_credits(v[0]), v[1], v[2], v[3]) for k, v in acc.items()}

    assert {m["model"]: counts(m) for m in data["by_model"]} == grouped("model")
    assert set(grouped("model")) == {FLASH, HY3, NEMOTRON}
    assert {k["key_id"]: counts(k) for k in data["by_key"]} == grouped("key_id")
    assert {e["endpoint"]: counts(e) for e in data["by_endpoint"]} == grouped("endpoint")
    assert set(grouped("endpoint")) == {"chat.completions", "responses"}
    assert {k["key_id"] for k in data["by_key"]} == {agent_a["key_id"], agent_b["key_id"]}
    assert data["balance"]["balance"] == format_credits(int(balance(stack, account) * 1_000_000))
    assert data["limits"]["daily_request_cap"]["spent"] >= len(entries)  # admissions today

    # The activity log: every record once, newest first, across pages.
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = ok(stack, reader, view="activity", limit="3", **({"cursor": cursor} if cursor else {}))
        seen += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert [r["id"] for r in seen] == [sid for sid, _ in reversed(entries)]
    by_id = dict(entries)
    for r in seen:
        f = by_id[r["id"]]
        assert (r["request_id"], r["model"], r["key_id"]) == (f["request_id"], f["model"], f["key_id"])
        assert r["credits"] == format_credits(int(f["credits"])) and r["usd"] == f["usd"]
        assert r["input_tokens"] == int(f["input_tokens"]) and r["status"] == f["status"]
    assert set(charged) <= {r["request_id"] for r in seen}

    # Neither view carries prompt or completion text.
    for body in (dashboard(stack, reader, days="7").text, dashboard(stack, reader, view="activity", limit="200").text):
        assert "canary-7d1f" not in body and "retry policy" not in body


def test_limit_status_follows_the_settings(stack: Stack, account: str) -> None:
    key = stack.create_key(account, "read:inference,write:inference")["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", "5")
    stack.cli(
        "settings", "set", "--account", account, "--daily-credit-cap", "2", "--monthly-credit-cap", "40",
        "--daily-request-cap", "10", "--reserve-floor", "1.5",
    )  # fmt: skip
    raw = sdk(stack, key).chat.completions.with_raw_response.create(
        model=FLASH, messages=[{"role": "user", "content": PROMPT}], max_tokens=20
    )
    charge = Decimal(raw.headers["x-critique-credits-charged"])
    wait_records(stack, account, 1)
    limits = ok(stack, key, days="30")["limits"]
    daily = limits["daily_credit_cap"]
    assert (Decimal(daily["spent"]), daily["cap"]) == (charge, "2.000000")
    assert Decimal(daily["remaining"]) == Decimal(2) - charge and daily["reached"] is False
    assert daily["resets_at"].endswith("T00:00:00Z")
    assert Decimal(limits["monthly_credit_cap"]["remaining"]) == Decimal(40) - charge
    assert limits["daily_request_cap"]["spent"] == 1 and limits["daily_request_cap"]["remaining"] == 9
    assert limits["daily_request_cap"]["percent"] == "10.00"
    bal = ok(stack, key)["balance"]
    assert bal["reserve_floor"] == "1.500000"
    assert Decimal(bal["available"]) == Decimal(5) - charge - Decimal("1.5")


def test_bad_parameters_scopes_and_other_accounts(stack: Stack, account: str) -> None:
    key = stack.create_key(account, "read:inference,write:inference")["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", "1")
    sdk(stack, key).chat.completions.create(model=FLASH, messages=[{"role": "user", "content": PROMPT}], max_tokens=10)
    wait_records(stack, account, 1)

    for params, param in [
        ({"days": "14"}, "days"), ({"days": "0"}, "days"), ({"days": "all"}, "days"),
        ({"view": "activity", "limit": "0"}, "limit"), ({"view": "activity", "limit": "201"}, "limit"),
        ({"view": "activity", "limit": "ten"}, "limit"),
        ({"view": "activity", "cursor": "garbage"}, "cursor"), ({"view": "activity", "cursor": "1700000000000-0"}, "cursor"),
        ({"view": "graph"}, "view"),
    ]:  # fmt: skip
        r = dashboard(stack, key, **params)
        assert r.status_code == 400, (params, r.text)
        assert r.json() == {
            "error": {
                "message": r.json()["error"]["message"],
                "type": "invalid_request_error",
                "code": "invalid_request",
                "param": param,
            }
        }

    r = dashboard(stack, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    writer = stack.create_key(account, "write:inference")["key"]
    r = dashboard(stack, writer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    admin = stack.create_key(account, "admin:inference")["key"]
    assert ok(stack, admin, days="7")["totals"]["requests"] == 1

    # Another account's key sees its own (empty) account, never this one's.
    stranger = stack.create_key(account + "-x", "read:inference")["key"]
    theirs = ok(stack, stranger, days="7")
    assert theirs["account"] == account + "-x" and theirs["totals"]["requests"] == 0 and theirs["by_key"] == []
    assert ok(stack, stranger, view="activity")["data"] == []
