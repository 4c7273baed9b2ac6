"""The provisioning API on a real 3-master Redis Cluster: the credit-change and audited settings
scripts touch only the account's slot (a CROSSSLOT error would fail them), and tokens, keys,
rotation and the audit trail work with the sidecar's own cluster client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from critique_sidecar.app import connect_redis
from critique_sidecar.config import Config

from .clusterkit import redis_cluster
from .provisioning_kit import admin_api


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(Path(tmp_path_factory.mktemp("prov-cluster"))) as ports:
        yield f"redis://127.0.0.1:{ports[0]}/0"


async def test_provisioning_on_a_redis_cluster(cluster_url: str) -> None:
    client: Any = connect_redis(Config(redis_url=cluster_url, redis_cluster=True))
    await client.initialize()
    async with admin_api(cluster_url, client=client) as admin:
        for account in ("acme", "globex", "initech"):  # accounts land in different slots
            a = f"/v1/accounts/{account}"
            replies = await asyncio.gather(
                *[admin.call("POST", f"{a}/credits/grant", json={"credits": "3"}, headers={"idempotency-key": "k"})
                  for _ in range(5)]
            )  # fmt: skip
            assert {r.status_code for r in replies} == {200} and len({r.text for r in replies}) == 1
            assert (await admin.call("GET", f"{a}/credits")).json()["balance"] == "3.000000"
            r = await admin.call("PATCH", f"{a}/settings", json={"daily_request_cap": 7})
            assert r.status_code == 200 and r.json()["daily_request_cap"] == 7
            key = (await admin.call("POST", f"{a}/keys", json={"daily_credit_cap": "1"})).json()
            rotated = await admin.call("POST", f"{a}/keys/{key['key_id']}/rotate", json={"grace_seconds": 0})
            assert rotated.status_code == 200 and rotated.json()["daily_credit_cap"] == "1.000000"
            assert (await admin.call("DELETE", f"{a}/keys/{key['key_id']}")).json()["revoked"] is True
            trail = (await admin.call("GET", f"{a}/audit")).json()["data"]
            assert [e["action"] for e in reversed(trail)] == [
                "credits.grant", "settings.patch", "key.create", "key.rotate", "key.revoke",
            ]  # fmt: skip
        ops = (await admin.call("GET", "/v1/audit/operators")).json()["data"]
        assert ops[0]["action"] == "operator_token.create"
