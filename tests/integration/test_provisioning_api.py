"""The provisioning API on real Redis: operator tokens (scopes, revocation), idempotent credit
changes under concurrency, key rotation with a grace period, settings with the customer's
validation, the usage export cursor and the audit trail (who, what, before, after, request id)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.store.redis_ledger import RedisLedger

from .provisioning_kit import Admin, admin_api, cli_change


@pytest.fixture
async def admin(redis_url: str) -> Any:
    async with admin_api(redis_url, key_rotation_grace_s=60) as a:
        yield a


async def audit(admin: Admin, account: str) -> list[dict[str, Any]]:
    r = await admin.call("GET", f"/v1/accounts/{account}/audit")
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


# -- operator tokens ----------------------------------------------------------------------


async def test_every_route_needs_an_active_operator_token_with_its_scope(admin: Admin, account: str) -> None:
    path = f"/v1/accounts/{account}/keys"
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Bearer crt_" + "A" * 38}):
        r = await admin.http.get(path, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_operator_token"
    usage_only = await admin.new_token(("usage",))
    r = await admin.call("GET", path, token=usage_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope" and "'keys'" in r.text
    assert (await admin.call("GET", f"/v1/accounts/{account}/usage", token=usage_only)).status_code == 200

    # Revoked: refused on the very next request (no cache).
    keys_token = await admin.new_token(("keys",), name="short-lived")
    assert (await admin.call("GET", path, token=keys_token)).status_code == 200
    token_id = next(t.token_id for t in await admin.tokens.list() if t.name == "short-lived" and not t.revoked)
    await admin.tokens.revoke(token_id, cli_change())
    assert (await admin.call("GET", path, token=keys_token)).status_code == 401

    # Stored by hash only; the create and the revoke are in the operator audit trail.
    raw = await admin.redis.hgetall(ks.operator_token(__import__("hashlib").sha256(keys_token.encode()).hexdigest()))
    assert raw and keys_token.encode() not in b"".join(list(raw.keys()) + list(raw.values()))
    r = await admin.call("GET", "/v1/audit/operators", params={"limit": "500"})
    actions = [(e["action"], e["target"]) for e in r.json()["data"]]
    assert ("operator_token.revoke", token_id) in actions and ("operator_token.create", token_id) in actions


# -- credits -------------------------------------------------------------------------------


async def test_a_grant_retried_concurrently_applies_once_and_returns_the_first_result(
    admin: Admin, account: str
) -> None:
    path = f"/v1/accounts/{account}/credits/grant"
    headers = {"idempotency-key": "grant-order-1"}
    replies = await asyncio.gather(
        *[admin.call("POST", path, json={"credits": "12.5"}, headers=headers) for _ in range(8)]
    )
    assert {r.status_code for r in replies} == {200}
    bodies = [r.json() for r in replies]
    assert all(b == bodies[0] for b in bodies)  # the first result, every time
    assert bodies[0]["balance_before"] == "0.000000" and bodies[0]["balance_after"] == "12.500000"
    assert sorted(r.headers.get("idempotent-replayed", "") for r in replies) == [""] + ["true"] * 7
    balance = (await admin.call("GET", f"/v1/accounts/{account}/credits")).json()
    assert balance["balance"] == "12.500000"
    grants = [e for e in await audit(admin, account) if e["action"] == "credits.grant"]
    assert len(grants) == 1 and grants[0]["idempotency_key"] == "grant-order-1"
    assert grants[0]["id"] == bodies[0]["audit_id"]
    assert grants[0]["before"] == {"balance": "0.000000"} and grants[0]["after"]["balance"] == "12.500000"
    assert grants[0]["actor"] == {"type": "operator", "id": admin.token_id, "name": "ops"}
    first_request = next(r for r in replies if "idempotent-replayed" not in r.headers)
    assert grants[0]["request_id"] == first_request.headers["x-request-id"]

    # Same key, different body: 409, nothing changes. A new key applies again.
    r = await admin.call("POST", path, json={"credits": "13"}, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
    r = await admin.call("POST", path, json={"credits": "1"}, headers={"idempotency-key": "grant-order-2"})
    assert r.json()["balance_after"] == "13.500000"


async def test_debits_are_idempotent_and_never_dig_into_open_holds(admin: Admin, account: str) -> None:
    await admin.call(
        "POST", f"/v1/accounts/{account}/credits/grant", json={"credits": 10}, headers={"idempotency-key": "g"}
    )
    await admin.redis.hset(ks.account(account), "held", 4_000_000)  # an open hold of 4 credits
    await admin.redis.hset(ks.holds(account), "req_open", 4_000_000)
    await admin.redis.zadd(ks.hold_expiry(account), {"req_open": int(time.time() * 1000) + 60_000})
    path = f"/v1/accounts/{account}/credits/debit"
    r = await admin.call("POST", path, json={"credits": "6.000001"}, headers={"idempotency-key": "d1"})
    assert (
        r.status_code == 402
        and r.json()["error"]["code"] == "insufficient_credits"
        and r.json()["error"]["param"] == "credits"
    )
    r = await admin.call("POST", path, json={"credits": "6"}, headers={"idempotency-key": "d1"})  # not remembered
    assert r.status_code == 200 and r.json()["balance_after"] == "4.000000"
    again = await admin.call("POST", path, json={"credits": "6"}, headers={"idempotency-key": "d1"})
    assert again.json() == r.json() and again.headers["idempotent-replayed"] == "true"
    shown = (await admin.call("GET", f"/v1/accounts/{account}/credits")).json()
    assert shown["balance"] == "4.000000" and shown["held"] == "4.000000" and shown["available"] == "0.000000"
    assert [h["request_id"] for h in shown["holds"]] == ["req_open"] and shown["holds"][0]["credits"] == "4.000000"


@pytest.mark.parametrize(
    "body, headers, param",
    [
        ({"credits": "1"}, {}, "Idempotency-Key"),
        ({"credits": "1"}, {"idempotency-key": "x" * 256}, "Idempotency-Key"),
        ({"credits": "0"}, {"idempotency-key": "k"}, "credits"),
        ({"credits": "-1"}, {"idempotency-key": "k"}, "credits"),
        ({"credits": "0.0000001"}, {"idempotency-key": "k"}, "credits"),
        (b'{"credits": 1e400}', {"idempotency-key": "k"}, "credits"),
        (b'{"credits": NaN}', {"idempotency-key": "k"}, None),
        ({"credits": "1", "extra": 1}, {"idempotency-key": "k"}, "extra"),
        ({}, {"idempotency-key": "k"}, "credits"),
    ],
)
async def test_bad_credit_changes_are_400s_that_change_nothing(
    admin: Admin, account: str, body: Any, headers: dict[str, str], param: str | None
) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = await admin.call("POST", f"/v1/accounts/{account}/credits/grant", headers=headers, **kw)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert r.json()["error"]["param"] == param
    assert await admin.redis.hget(ks.account(account), "balance") is None
    assert await admin.redis.xlen(ks.audit(account)) == 0


async def test_grants_with_terms_are_listed_in_spend_order_with_what_expires_when(admin: Admin, account: str) -> None:
    path = f"/v1/accounts/{account}/credits/grant"
    paid = await admin.call("POST", path, json={"credits": "10"}, headers={"idempotency-key": "p"})
    assert paid.status_code == 200 and paid.json()["grant_id"] == "g1"
    promo = {"credits": "3", "category": "promotional", "expires_at": "2099-01-01T00:00:00Z", "priority": 50}
    r = await admin.call("POST", path, json=promo, headers={"idempotency-key": "promo"})
    assert r.status_code == 200 and r.json()["grant_id"] == "g2" and r.json()["balance_after"] == "13.000000"
    again = await admin.call("POST", path, json=promo, headers={"idempotency-key": "promo"})
    assert again.json() == r.json() and again.headers["idempotent-replayed"] == "true"
    # the same key with other terms is a different request
    other = await admin.call("POST", path, json={**promo, "priority": 49}, headers={"idempotency-key": "promo"})
    assert other.status_code == 409
    later = {"credits": "5", "effective_at": "2099-01-01T00:00:00+00:00", "expires_at": "2099-02-01"}
    r = await admin.call("POST", path, json=later, headers={"idempotency-key": "later"})
    assert r.status_code == 200 and r.json()["credits"] == "5.000000" and r.json()["balance_after"] == "13.000000"
    listed = (await admin.call("GET", f"/v1/accounts/{account}/credits/grants")).json()
    assert listed["account"] == account
    assert [(g["id"], g["category"], g["state"], g["remaining"], g["expires_at"]) for g in listed["data"]] == [
        ("g2", "promotional", "active", "3.000000", "2099-01-01T00:00:00.000Z"),
        ("g3", "paid", "waiting", "5.000000", "2099-02-01T00:00:00.000Z"),
        ("g1", "paid", "active", "10.000000", None),
    ]
    assert listed["data"][1]["effective_at"] == "2099-01-01T00:00:00.000Z" and listed["data"][0]["priority"] == 50
    # a debit draws in spend order: the promotional grant first
    r = await admin.call("POST", f"/v1/accounts/{account}/credits/debit", json={"credits": "4"},
                         headers={"idempotency-key": "d"})  # fmt: skip
    assert r.status_code == 200 and r.json()["balance_after"] == "9.000000"
    listed = (await admin.call("GET", f"/v1/accounts/{account}/credits/grants")).json()
    assert [(g["id"], g["remaining"]) for g in listed["data"]] == [("g3", "5.000000"), ("g1", "9.000000")]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("grant", {"credits": "1", "category": "free"}, "category"),
        ("grant", {"credits": "1", "category": 1}, "category"),
        ("grant", {"credits": "1", "priority": 101}, "priority"),
        ("grant", {"credits": "1", "priority": -1}, "priority"),
        ("grant", {"credits": "1", "priority": "5"}, "priority"),
        ("grant", {"credits": "1", "priority": True}, "priority"),
        ("grant", {"credits": "1", "priority": 1.5}, "priority"),
        ("grant", {"credits": "1", "expires_at": "tomorrow"}, "expires_at"),
        ("grant", {"credits": "1", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ("grant", {"credits": "1", "expires_at": 4102444800}, "expires_at"),
        ("grant", {"credits": "1", "effective_at": "2099-13-01"}, "effective_at"),
        ("grant", {"credits": "1", "effective_at": "x" * 1000}, "effective_at"),
        ("grant", {"credits": "1", "effective_at": "2099-02-01", "expires_at": "2099-01-01"}, "expires_at"),
        ("grant", {"credits": "1", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ("debit", {"credits": "1", "priority": 5}, "priority"),
        ("debit", {"credits": "1", "expires_at": "2099-01-01"}, "expires_at"),
    ],
)
async def test_bad_grant_terms_are_400s_naming_the_field(
    admin: Admin, account: str, path: str, body: dict[str, Any], param: str
) -> None:
    await admin.redis.hset(ks.account(account), "balance", 5)
    r = await admin.call("POST", f"/v1/accounts/{account}/credits/{path}", json=body, headers={"idempotency-key": "k"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert r.json()["error"]["param"] == param
    assert await admin.redis.hget(ks.account(account), "balance") == b"5"
    assert not await admin.redis.exists(ks.grants(account))
    assert await admin.redis.xlen(ks.audit(account)) == 0


def test_the_cli_grants_with_terms_and_lists_grants(
    redis_url: str, account: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from critique_sidecar.cli import main

    monkeypatch.setenv("CRITIQUE_REDIS_URL", redis_url)
    base = ["credits", "grant", "--account", account]
    assert main([*base, "--credits", "4"]) == 0 and "(grant g1)" in capsys.readouterr().out
    promo = [*base, "--credits", "1.5", "--category", "promotional", "--expires-at", "2099-01-01T00:00:00Z",
             "--priority", "10", "--idempotency-key", "cli-promo"]  # fmt: skip
    assert main(promo) == 0 and "balance 5.500000 credits (grant g2)" in capsys.readouterr().out
    assert main(promo) == 0 and "already applied" in capsys.readouterr().out
    assert main([*base, "--credits", "1", "--priority", "101"]) == 2 and "priority" in capsys.readouterr().err
    assert main([*base, "--credits", "1", "--expires-at", "soon"]) == 2 and "expires_at" in capsys.readouterr().err
    assert main([*base, "--credits", "-1", "--priority", "5"]) == 2 and "grants only" in capsys.readouterr().err
    assert main(["credits", "grants", "--account", account, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [(g["id"], g["category"], g["remaining"], g["priority"], g["expires_at"]) for g in listed] == [
        ("g2", "promotional", "1.500000", 10, "2099-01-01T00:00:00.000Z"),
        ("g1", "paid", "4.000000", 50, None),
    ]
    assert main(["credits", "grants", "--account", account]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("id\tcategory") and table[1].startswith("g2\tpromotional\tactive\t1.500000")
    assert table[2].endswith("never")


# -- keys ----------------------------------------------------------------------------------


async def test_keys_create_list_update_revoke_with_controls(admin: Admin, account: str) -> None:
    base = f"/v1/accounts/{account}/keys"
    r = await admin.call(
        "POST", base,
        json={"name": "ci", "scopes": ["write:inference"], "expires_at": "2099-01-01T00:00:00Z",
              "models": ["deepseek/deepseek-v4-flash"], "daily_credit_cap": "2.5"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"].startswith("crt_") and created["expires_at"] == "2099-01-01T00:00:00Z"
    assert created["models"] == ["deepseek/deepseek-v4-flash"] and created["daily_credit_cap"] == "2.500000"
    listed = (await admin.call("GET", base)).json()["data"]
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]
    assert created["key"] not in (await admin.call("GET", base)).text

    r = await admin.call("PATCH", f"{base}/{created['key_id']}", json={"models": None, "max_concurrent": 3})
    assert r.status_code == 200 and r.json()["models"] is None and r.json()["max_concurrent"] == 3
    assert r.json()["daily_credit_cap"] == "2.500000"  # untouched
    bad = await admin.call("POST", base, json={"models": ["no/such-model"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "models"
    bad = await admin.call("POST", base, json={"scopes": ["root"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scopes"

    r = await admin.call("DELETE", f"{base}/{created['key_id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    missing = await admin.call("DELETE", f"/v1/accounts/other-{account}/keys/{created['key_id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"  # not the account's key

    trail = await audit(admin, account)
    assert [e["action"] for e in trail] == ["key.revoke", "key.controls", "key.create"]
    assert trail[0]["before"]["revoked"] is False and trail[0]["after"]["revoked"] is True
    assert trail[1]["before"]["models"] == ["deepseek/deepseek-v4-flash"] and trail[1]["after"]["models"] is None
    assert all(e["target"] == created["key_id"] for e in trail)
    assert created["key"] not in str(trail)  # the secret is never in the audit trail


async def test_rotation_keeps_the_id_and_controls_and_the_old_secret_works_only_for_the_grace(
    admin: Admin, account: str
) -> None:
    base = f"/v1/accounts/{account}/keys"
    created = (await admin.call("POST", base, json={"name": "svc", "daily_credit_cap": "1"})).json()
    auth = Authenticator(RedisKeyStore(admin.redis), cache_ttl_s=60)
    assert (await auth.identify(f"Bearer {created['key']}")).key_id == created["key_id"]  # cached now

    r = await admin.call("POST", f"{base}/{created['key_id']}/rotate", json={"grace_seconds": 2})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["key_id"] == created["key_id"] and rotated["key"] != created["key"]
    assert rotated["daily_credit_cap"] == "1.000000" and rotated["name"] == "svc"
    auth.forget(None)  # what the revocation feed does in a running sidecar
    assert (await auth.identify(f"Bearer {rotated['key']}")).key_id == created["key_id"]
    assert (await auth.identify(f"Bearer {created['key']}")).key_id == created["key_id"]  # in its grace period

    deadline = time.monotonic() + 10
    while True:  # poll until the grace period is over (cache TTL 60 s: the cutoff is the record's own)
        try:
            await auth.identify(f"Bearer {created['key']}")
        except ApiError as exc:
            assert exc.code == "invalid_api_key" and "rotated" in exc.message
            break
        assert time.monotonic() < deadline, "old secret still accepted"
        await asyncio.sleep(0.1)
    assert (await auth.identify(f"Bearer {rotated['key']}")).key_id == created["key_id"]

    # Revoking during a grace period ends both secrets.
    second = (await admin.call("POST", f"{base}/{created['key_id']}/rotate", json={"grace_seconds": 600})).json()
    await admin.call("DELETE", f"{base}/{created['key_id']}")
    auth.forget(None)
    for secret in (rotated["key"], second["key"]):
        with pytest.raises(ApiError):
            await auth.identify(f"Bearer {secret}")
    r = await admin.call("POST", f"{base}/{created['key_id']}/rotate", json={})
    assert r.status_code == 400 and "revoked" in r.json()["error"]["message"]
    r = await admin.call("POST", f"{base}/{created['key_id']}/rotate", json={"grace_seconds": 31 * 86400})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grace_seconds"


# -- settings, usage, audit ---------------------------------------------------------------------


async def test_settings_patch_validates_like_the_customer_route_and_is_audited(admin: Admin, account: str) -> None:
    path = f"/v1/accounts/{account}/settings"
    r = await admin.call("PATCH", path, json={"daily_credit_cap": "5", "block_when_cap_reached": False},
                         headers={"x-request-id": "ops-ticket-42"})  # fmt: skip
    assert (
        r.status_code == 200
        and r.json()["daily_credit_cap"] == "5.000000"
        and r.headers["x-request-id"] == "ops-ticket-42"
    )
    for bad, param in (
        ({"daily_credit_cap": -1}, "daily_credit_cap"),
        ({"enabled": "yes"}, "enabled"),
        ({"nope": 1}, "nope"),
    ):
        r = await admin.call("PATCH", path, json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert (await admin.call("GET", path)).json()["daily_credit_cap"] == "5.000000"
    [entry] = await audit(admin, account)
    assert entry["action"] == "settings.patch" and entry["request_id"] == "ops-ticket-42"
    assert entry["before"]["daily_credit_cap"] is None and entry["after"]["daily_credit_cap"] == "5.000000"
    assert entry["before"]["block_when_cap_reached"] is True and entry["after"]["block_when_cap_reached"] is False
    bad_account = await admin.call("GET", "/v1/accounts/bad%20account/settings")
    assert bad_account.status_code == 400 and bad_account.json()["error"]["param"] == "account"


async def test_usage_export_pages_by_cursor_and_audit_pages_newest_first(admin: Admin, account: str) -> None:
    ledger = RedisLedger(admin.redis)
    now_ms = int(time.time() * 1000)
    for i in range(5):
        await ledger.settle(
            UsageRecord(
                f"req_{i}",
                account,
                "key_x",
                "deepseek/deepseek-v4-flash",
                10,
                20,
                1000 + i,
                "0.00001",
                "v",
                False,
                False,
                "ok",
                5,
                now_ms,
                "2026-12-05",
                "2026-12",
            )
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"after": cursor} if cursor else {})}
        page = (await admin.call("GET", f"/v1/accounts/{account}/usage", params=params)).json()
        seen += [r["request_id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [f"req_{i}" for i in range(5)]
    empty = (await admin.call("GET", f"/v1/accounts/{account}/usage", params={"after": cursor})).json()
    assert empty == {"data": [], "next_cursor": cursor, "has_more": False}  # poll again from here later
    r = await admin.call("GET", f"/v1/accounts/{account}/usage", params={"after": "garbage"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"
    r = await admin.call("GET", f"/v1/accounts/{account}/usage", params={"limit": "0"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    assert account in (await admin.call("GET", "/v1/usage/accounts")).json()["data"]

    for i in range(3):
        await admin.call(
            "POST",
            f"/v1/accounts/{account}/credits/grant",
            json={"credits": i + 1},
            headers={"idempotency-key": f"k{i}"},
        )
    first = (await admin.call("GET", f"/v1/accounts/{account}/audit", params={"limit": "2"})).json()
    rest = (await admin.call("GET", f"/v1/accounts/{account}/audit", params={"before": first["next_cursor"]})).json()
    assert [e["idempotency_key"] for e in first["data"] + rest["data"]] == ["k2", "k1", "k0"]
    assert rest["next_cursor"] is None
    charged = sum(1000 + i for i in range(5))  # what the five settlements above charged (micro-credits)
    assert (
        Decimal((await admin.call("GET", f"/v1/accounts/{account}/credits")).json()["balance"])
        == Decimal(6_000_000 - charged) / 1_000_000
    )


async def test_unknown_routes_and_methods_are_json_errors(admin: Admin, account: str) -> None:
    r = await admin.call("GET", "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await admin.call("PUT", f"/v1/accounts/{account}/keys")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await admin.call("POST", f"/v1/accounts/{account}/keys", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = await admin.call("POST", f"/v1/accounts/{account}/keys", content=b"[" * 20_000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# -- the CLI: the same service, audited as the local operator ----------------------------------


def test_the_cli_uses_the_same_service(
    redis_url: str, account: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from critique_sidecar.cli import main

    monkeypatch.setenv("CRITIQUE_REDIS_URL", redis_url)
    grant = ["credits", "grant", "--account", account, "--credits", "2.5", "--idempotency-key", "cli-1"]
    assert main(grant) == 0 and "balance 2.500000" in capsys.readouterr().out
    assert main(grant) == 0 and "already applied" in capsys.readouterr().out
    assert main(["credits", "grant", "--account", account, "--credits", "-9"]) == 2  # debit past the balance
    assert "refused" in capsys.readouterr().err

    assert main(["operator-tokens", "create", "--name", "cli-made", "--scopes", "usage,audit", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["token"].startswith("crtop_") and made["scopes"] == ["audit", "usage"]
    assert main(["operator-tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(t["token_id"] == made["token_id"] for t in listed) and made["token"] not in str(listed)
    assert main(["operator-tokens", "revoke", made["token_id"]]) == 0
    capsys.readouterr()

    assert main(["keys", "create", "--account", account, "--json"]) == 0
    key = json.loads(capsys.readouterr().out)
    assert main(["keys", "rotate", key["key_id"], "--grace-seconds", "0", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["key_id"] == key["key_id"] and rotated["key"] != key["key"]

    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_url, decode_responses=True) as r:
        entries = [fields for _, fields in r.xrange(ks.audit(account))]
    assert [e["action"] for e in entries] == ["credits.grant", "key.create", "key.rotate"]
    assert all(e["actor_type"] == "cli" for e in entries)


async def test_an_account_id_with_a_trailing_newline_is_refused_not_a_second_account(
    admin: Admin, account: str
) -> None:
    for path in (f"/v1/accounts/{account}%0A/credits", f"/v1/accounts/{account}%0A/keys"):
        r = await admin.call("GET", path)
        assert r.status_code == 400 and r.json()["error"]["param"] == "account", r.text
    r = await admin.call(
        "POST", f"/v1/accounts/{account}%0A/credits/grant", json={"credits": "5"}, headers={"idempotency-key": "nl-1"}
    )
    assert r.status_code == 400
    r = await admin.call(
        "POST", f"/v1/accounts/{account}/credits/grant", json={"credits": "5\n"}, headers={"idempotency-key": "nl-2"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "credits", r.text
    assert not [k async for k in admin.redis.scan_iter(match=f"crt:{{a:{account}\n}}*")]
