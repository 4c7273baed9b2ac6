"""The provisioning flow end to end: an operator token (CLI) drives the provisioning API on the
sidecar's admin listener; the customer's requests go through the real Envoy with the openai SDK.
Funding with an idempotent grant retried 5 times at once (the balance rises once), a key with a
model allowlist and an expiry, a request that succeeds, then the allowlist, per-key daily cap
and expiry refusals, a rotation with a grace period, and the audit trail of all of it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import openai

from critique_sidecar.core.key_controls import iso_ms
from critique_sidecar.devtools.stack import Stack, wait_until

from .helpers import client

ALLOWED = "deepseek/deepseek-v4-flash"
OTHER = "tencent/hy3-preview"


class Ops:
    """Plain-HTTP calls to the provisioning API with one operator token."""

    def __init__(self, stack: Stack, token: str, account: str) -> None:
        self.base = f"{stack.provision_url}/v1/accounts/{account}"
        self.headers = {"authorization": f"Bearer {token}"}

    def __call__(self, method: str, path: str, expect: int = 200, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        r = httpx.request(method, self.base + path, headers=headers, timeout=15, **kw)
        assert r.status_code == expect, r.text
        return r


def refusal(stack: Stack, key: str, model: str = ALLOWED) -> tuple[int, str, str]:
    """(status, code, message) of a chat request that the product refuses."""
    try:
        client(stack, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=16
        )
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, str(body.get("code")), str(body.get("message"))
    return 200, "", ""


def test_operator_provisions_an_account_and_the_customer_meets_every_control(stack: Stack, account: str) -> None:
    token = stack.operator_token("keys,credits,settings,usage,audit", name="signup-service")
    ops = Ops(stack, token, account)

    # The admin API is on its own listener only: the public Envoy listener has no route to it.
    for path in (f"/v1/accounts/{account}/keys", "/openapi.json"):
        r = httpx.get(stack.base_url + path, headers=ops.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    # Funding: one grant, retried 5 times at once with the same Idempotency-Key.
    def grant(_: int) -> httpx.Response:
        return ops("POST", "/credits/grant", json={"credits": "25", "note": "signup"},
                   headers={"idempotency-key": f"signup-{account}"})  # fmt: skip

    with ThreadPoolExecutor(5) as pool:
        grants = list(pool.map(grant, range(5)))
    assert len({r.text for r in grants}) == 1  # every caller got the first result
    assert sum(1 for r in grants if r.headers.get("idempotent-replayed") == "true") == 4
    assert ops("GET", "/credits").json()["balance"] == "25.000000"

    # A key with a model allowlist, an expiry and a per-key daily cap.
    tomorrow = iso_ms(int(time.time() * 1000) + 86_400_000)
    key = ops("POST", "/keys", 201, json={"name": "customer-agent", "scopes": ["read:inference", "write:inference"],
                                          "models": [ALLOWED], "expires_at": tomorrow, "daily_credit_cap": "5"}).json()  # fmt: skip
    assert key["models"] == [ALLOWED] and key["expires_at"] == tomorrow and key["daily_credit_cap"] == "5.000000"

    # The customer's request succeeds and is charged.
    raw = client(stack, key["key"]).chat.completions.with_raw_response.create(
        model=ALLOWED, messages=[{"role": "user", "content": "Plan a rollout in three steps."}], max_tokens=40
    )
    assert raw.http_response.status_code == 200 and raw.parse().choices[0].message.content
    charged = raw.headers["x-critique-credits-charged"]

    # The allowlist: another model is a 403 naming it.
    status, code, message = refusal(stack, key["key"], OTHER)
    assert (status, code) == (403, "model_not_allowed") and OTHER in message

    # The per-key daily cap: lowered below today's spend by the operator, the next request is a 429.
    ops("PATCH", f"/keys/{key['key_id']}", json={"daily_credit_cap": charged})
    assert refusal(stack, key["key"])[:2] == (429, "key_daily_credit_cap_reached")
    ops("PATCH", f"/keys/{key['key_id']}", json={"daily_credit_cap": None})
    assert refusal(stack, key["key"])[0] == 200

    # Rotation: a new secret at once; the old one keeps working for the grace period, then 401.
    rotated = ops("POST", f"/keys/{key['key_id']}/rotate", json={"grace_seconds": 2}).json()
    assert rotated["key_id"] == key["key_id"] and rotated["models"] == [ALLOWED]
    assert refusal(stack, rotated["key"])[0] == 200
    wait_until(lambda: refusal(stack, key["key"])[:2] == (401, "invalid_api_key"), "old secret retired", timeout=15)
    assert refusal(stack, rotated["key"])[0] == 200

    # Expiry: moved to two seconds from now; once passed, the key is a 401 saying it expired.
    soon = iso_ms(int(time.time() * 1000) + 2000)
    ops("PATCH", f"/keys/{key['key_id']}", json={"expires_at": soon})
    wait_until(lambda: refusal(stack, rotated["key"])[:2] == (401, "invalid_api_key"), "key expired", timeout=15)
    assert "expired" in refusal(stack, rotated["key"])[2]

    # The usage export has the customer's charges; the audit trail has every change, by whom.
    usage = ops("GET", "/usage", params={"limit": "500"}).json()["data"]  # the polls above were charged too
    assert len(usage) >= 4 and {u["key_id"] for u in usage} == {key["key_id"]}
    assert usage[0]["credits"] == charged and usage[0]["request_id"] == raw.headers["x-request-id"]
    spent = sum(Decimal(u["credits"]) for u in usage)
    assert Decimal(ops("GET", "/credits").json()["balance"]) == Decimal(25) - spent
    trail = ops("GET", "/audit").json()["data"]
    assert [e["action"] for e in reversed(trail)] == [
        "credits.grant", "key.create", "key.controls", "key.controls", "key.rotate", "key.controls",
    ]  # fmt: skip
    operator_id = next(e["actor"]["id"] for e in trail)
    assert all(e["actor"]["type"] == "operator" and e["actor"]["name"] == "signup-service" for e in trail)
    assert all(e["actor"]["id"] == operator_id and e["request_id"] for e in trail)
    grant_entry = trail[-1]
    assert grant_entry["after"]["balance"] == "25.000000" and grant_entry["idempotency_key"] == f"signup-{account}"
    assert grant_entry["request_id"] == next(
        r.headers["x-request-id"] for r in grants if "idempotent-replayed" not in r.headers
    )
    assert key["key"] not in str(trail) and rotated["key"] not in str(trail)
