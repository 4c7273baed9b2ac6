"""Keys cannot escalate, on real Redis, through the customer's panel
(`/api/settings/inference-api/keys`) and the provisioning API: a key creates only keys with a
subset of its scopes and at least its restrictions, a rotated-out secret cannot administer,
revoking a key revokes what it created, and a creator's tighter controls reach its children.
One test per escalation path; the races at the end run revocation against creation and rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from critique_sidecar.admin import provisioning_on
from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.store.key_store import RedisKeyStore
from critique_sidecar.web.app import WebContext, build_web_app

from .provisioning_kit import Admin, admin_api, cli_change

MODEL = "deepseek/deepseek-v4-flash"
OTHER = "tencent/hy3-preview"
KEYS = "/api/settings/inference-api/keys"
DAY_MS = 86_400_000


class Panel:
    """The customer's key routes in process, signed in with one key at a time."""

    def __init__(self, http: httpx.AsyncClient, store: RedisKeyStore, account: str) -> None:
        self.http, self.store, self.account = http, store, account

    async def create(self, secret: str, **body: Any) -> httpx.Response:
        return await self.http.post(KEYS, json=body, headers={"authorization": f"Bearer {secret}"})

    async def revoke(self, secret: str, key_id: str) -> httpx.Response:
        return await self.http.delete(KEYS, params={"key_id": key_id}, headers={"authorization": f"Bearer {secret}"})

    async def listed(self, secret: str) -> dict[str, dict[str, Any]]:
        r = await self.http.get(KEYS, headers={"authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        return {k["key_id"]: k for k in r.json()["data"]}


@pytest.fixture
async def panel(redis_client: aioredis.Redis, account: str) -> AsyncIterator[Panel]:
    catalog = load_catalog()
    store = RedisKeyStore(redis_client)
    keys = provisioning_on(redis_client, known_models=frozenset(m.id for m in catalog.models))
    ctx = WebContext(Authenticator(store, cache_ttl_s=0), catalog, keys=keys)
    transport = httpx.ASGITransport(app=build_web_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as http:
        yield Panel(http, store, account)


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    async with admin_api(redis_url, key_rotation_grace_s=3600) as a:
        yield a


async def restricted_admin(panel: Panel) -> tuple[str, str]:
    """The issue's key: admin but otherwise restricted (read + admin, one model, a tiny daily cap,
    rpm 1, an expiry). Made by the operator (no parent)."""
    service = provisioning_on(panel.store._redis)
    controls = KeyControls(
        expires_at_ms=int(time.time() * 1000) + DAY_MS, models=(MODEL,), daily_credit_cap=1, requests_per_minute=1
    )
    new = await service.create_key(
        cli_change(), panel.account, name="boss", scopes=("read:inference", "admin:inference"), controls=controls
    )
    return new.key, new.key_id


def refused(r: httpx.Response, param: str) -> None:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_scope" and error["param"] == param, error


# -- one test per escalation path --------------------------------------------------------


async def test_a_key_cannot_give_scopes_it_lacks(panel: Panel) -> None:
    secret, _ = await restricted_admin(panel)
    refused(await panel.create(secret, scopes=["write:inference"]), "scopes")
    r = await panel.create(secret)  # no scopes named: the default ones it has (read), not write
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == ["read:inference"]


async def test_a_key_cannot_widen_its_model_allowlist(panel: Panel) -> None:
    secret, _ = await restricted_admin(panel)
    refused(await panel.create(secret, scopes=["read:inference"], models=[MODEL, OTHER]), "models")
    r = await panel.create(secret, scopes=["read:inference"])  # none named: its own
    assert r.status_code == 201 and r.json()["models"] == [MODEL], r.text


async def test_a_key_cannot_raise_caps_or_rate_limits(panel: Panel) -> None:
    secret, _ = await restricted_admin(panel)
    refused(await panel.create(secret, scopes=["read:inference"], daily_credit_cap="0.000002"), "daily_credit_cap")
    refused(await panel.create(secret, scopes=["read:inference"], requests_per_minute=2), "requests_per_minute")
    r = await panel.create(secret, scopes=["read:inference"], tokens_per_minute=10)  # one it lacks: free to set
    child = r.json()
    assert r.status_code == 201, r.text
    assert (child["daily_credit_cap"], child["requests_per_minute"], child["tokens_per_minute"]) == ("0.000001", 1, 10)


async def test_a_key_cannot_outlive_its_creator(panel: Panel) -> None:
    secret, boss_id = await restricted_admin(panel)
    boss = await panel.listed(secret)
    late = "2999-01-01T00:00:00Z"
    refused(await panel.create(secret, scopes=["read:inference"], expires_at=late), "expires_at")
    r = await panel.create(secret, scopes=["read:inference"])
    assert r.status_code == 201 and r.json()["expires_at"] == boss[boss_id]["expires_at"]


async def test_a_rotated_out_secret_cannot_administer(panel: Panel) -> None:
    old, boss_id = await restricted_admin(panel)
    rotated = await panel.store.rotate(boss_id, 3600, int(time.time() * 1000))
    assert rotated is not None
    new = rotated[0]
    r = await panel.create(old, scopes=["read:inference"])
    assert r.status_code == 403 and "rotated-out secret" in r.json()["error"]["message"], r.text
    assert (await panel.revoke(old, boss_id)).status_code == 403
    assert (
        await panel.http.get(KEYS, headers={"authorization": f"Bearer {old}"})
    ).status_code == 200  # reads still work
    assert (await panel.create(new, scopes=["read:inference"])).status_code == 201


async def test_revoking_a_key_revokes_the_keys_it_created(panel: Panel) -> None:
    secret, boss_id = await restricted_admin(panel)
    child = (await panel.create(secret, scopes=["read:inference", "admin:inference"])).json()
    grandchild = (await panel.create(child["key"], scopes=["read:inference"])).json()
    listed = await panel.listed(secret)
    assert listed[child["key_id"]]["parent_key_id"] == boss_id
    assert listed[grandchild["key_id"]]["parent_key_id"] == child["key_id"]
    assert listed[boss_id]["parent_key_id"] is None

    service = provisioning_on(panel.store._redis)
    await service.revoke_key(cli_change(), panel.account, boss_id)
    auth = Authenticator(panel.store, cache_ttl_s=0)
    for key in (secret, child["key"], grandchild["key"]):
        with pytest.raises(ApiError) as err:
            await auth.identify(f"Bearer {key}")
        assert err.value.code == "invalid_api_key"


async def test_a_key_revokes_only_itself_and_its_descendants(panel: Panel) -> None:
    secret, boss_id = await restricted_admin(panel)
    _, sibling_id = await restricted_admin(panel)
    child = (await panel.create(secret, scopes=["read:inference", "admin:inference"])).json()
    refused(await panel.revoke(child["key"], boss_id), "key_id")  # not its parent
    refused(await panel.revoke(secret, sibling_id), "key_id")  # not a sibling
    r = await panel.revoke(secret, child["key_id"])
    assert r.status_code == 200 and r.json()["revoked"] is True


async def test_an_expired_creator_takes_its_children_with_it(panel: Panel, redis_client: aioredis.Redis) -> None:
    secret, boss_id = await restricted_admin(panel)
    child = (await panel.create(secret, scopes=["read:inference"])).json()
    service = provisioning_on(redis_client)
    soon = KeyControls(expires_at_ms=int(time.time() * 1000) - 1, models=(MODEL,))  # the operator ends it now
    await service.set_key_controls(cli_change(), panel.account, boss_id, soon)
    assert (await panel.store.controls_of(panel.account, child["key_id"])).expires_at_ms == soon.expires_at_ms
    with pytest.raises(ApiError) as err:
        await Authenticator(panel.store, cache_ttl_s=0).identify(f"Bearer {child['key']}")
    assert "expired" in err.value.message


async def test_tightening_a_creator_tightens_its_children(panel: Panel, redis_client: aioredis.Redis) -> None:
    secret, boss_id = await restricted_admin(panel)
    child = (await panel.create(secret, scopes=["read:inference"], tokens_per_minute=100)).json()
    service = provisioning_on(redis_client)
    boss = await panel.store.controls_of(panel.account, boss_id)
    await service.set_key_controls(cli_change(), panel.account, boss_id, boss.changed(tokens_per_minute=40))
    assert (await panel.store.controls_of(panel.account, child["key_id"])).tokens_per_minute == 40
    # An operator's change to the child cannot lift it above its creator either.
    with pytest.raises(ApiError) as err:
        await service.set_key_controls(cli_change(), panel.account, child["key_id"], KeyControls(tokens_per_minute=50))
    assert err.value.param == "tokens_per_minute"


# -- the provisioning API: the same rules for a child it makes ---------------------------


async def test_the_provisioning_api_applies_the_same_rules_to_a_child(admin: Admin, account: str) -> None:
    r = await admin.call(
        "POST", f"/v1/accounts/{account}/keys", json={"scopes": ["read:inference"], "requests_per_minute": 5}
    )
    parent = r.json()
    base = {"parent_key_id": parent["key_id"]}
    r = await admin.call("POST", f"/v1/accounts/{account}/keys", json={**base, "scopes": ["write:inference"]})
    assert r.status_code == 403 and r.json()["error"]["param"] == "scopes"
    r = await admin.call("POST", f"/v1/accounts/{account}/keys", json={**base, "requests_per_minute": 6})
    assert r.status_code == 403 and r.json()["error"]["param"] == "requests_per_minute"
    r = await admin.call("POST", f"/v1/accounts/{account}/keys", json=base)
    child = r.json()
    assert r.status_code == 201 and child["parent_key_id"] == parent["key_id"] and child["requests_per_minute"] == 5
    r = await admin.call("PATCH", f"/v1/accounts/{account}/keys/{child['key_id']}", json={"requests_per_minute": None})
    assert r.status_code == 200 and r.json()["requests_per_minute"] == 5  # removing it inherits the parent's
    await admin.call("DELETE", f"/v1/accounts/{account}/keys/{parent['key_id']}")
    listed = {k["key_id"]: k for k in (await admin.call("GET", f"/v1/accounts/{account}/keys")).json()["data"]}
    assert listed[child["key_id"]]["revoked"] is True


# -- races ---------------------------------------------------------------------------------


async def test_a_child_created_while_its_parent_is_revoked_is_revoked(
    redis_client: aioredis.Redis, account: str
) -> None:
    """A creator's identity can be cached for a moment after its revocation: a child made then
    must not survive. The creates start at every point of the revocation (yields, not time)."""
    store = RedisKeyStore(redis_client)

    async def child_after(parent: str, turns: int) -> str:
        for _ in range(turns):
            await asyncio.sleep(0)
        return (await store.create(account, ("read:inference",), parent=parent))[1].key_id

    for _ in range(5):
        _, parent = await store.create(account, ("read:inference",))
        made, _ = await asyncio.gather(
            asyncio.gather(*(child_after(parent.key_id, turns) for turns in range(0, 40, 2))),
            store.revoke(parent.key_id),
        )
        made.append(await child_after(parent.key_id, 0))  # after the revocation finished
        for key_id in made:
            record = await store.by_id(key_id)
            assert record is not None and record.revoked, "a child of a revoked key survived"


async def test_rotate_racing_revoke_leaves_no_live_secret(redis_client: aioredis.Redis, account: str) -> None:
    store = RedisKeyStore(redis_client)
    auth = Authenticator(store, cache_ttl_s=0)
    for _ in range(30):
        first, record = await store.create(account, ("read:inference",))
        rotated, _ = await asyncio.gather(
            store.rotate(record.key_id, 3600, int(time.time() * 1000)), store.revoke(record.key_id)
        )
        secrets = [first] + ([rotated[0]] if rotated else [])
        for secret in secrets:
            with pytest.raises(ApiError):
                await auth.identify(f"Bearer {secret}")
