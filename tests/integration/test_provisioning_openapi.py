"""The provisioning API's OpenAPI document against the real responses: every operation is
called on real Redis (successes and error cases), and each request and response is validated
against the document the API serves (openapi-core). The test fails if any documented operation
was not exercised with its success status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate as validate_spec
from werkzeug.datastructures import Headers, ImmutableMultiDict

from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.store.redis_ledger import RedisLedger

from .provisioning_kit import Admin, admin_api


@dataclass
class _Request:
    """openapi-core's request protocol over an httpx request."""

    raw: httpx.Request
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(self.raw.url.params.multi_items())),
            header=Headers(list(self.raw.headers.items())),
        )

    host_url = "http://admin"

    @property
    def path(self) -> str:
        return self.raw.url.path

    @property
    def method(self) -> str:
        return self.raw.method.lower()

    @property
    def body(self) -> bytes | None:
        return self.raw.content or None

    @property
    def content_type(self) -> str:
        return str(self.raw.headers.get("content-type", "application/json"))


@dataclass
class _Response:
    raw: httpx.Response

    @property
    def status_code(self) -> int:
        return self.raw.status_code

    @property
    def content_type(self) -> str:
        return str(self.raw.headers.get("content-type", ""))

    @property
    def headers(self) -> Headers:
        return Headers(list(self.raw.headers.items()))

    @property
    def data(self) -> bytes:
        return self.raw.content


class Checked:
    """Calls the API and validates each exchange against the served document."""

    def __init__(self, admin: Admin, document: dict[str, Any]) -> None:
        self.admin = admin
        self.spec = OpenAPI.from_dict(document)
        self.operations = {
            (method.upper(), path): op["operationId"]
            for path, item in document["paths"].items()
            for method, op in item.items()
        }
        self.covered: set[tuple[str, int]] = set()

    async def __call__(self, method: str, path: str, expect: int, **kw: Any) -> httpx.Response:
        r = await self.admin.call(method, path, **kw)
        assert r.status_code == expect, r.text
        request = _Request(r.request)
        if expect < 400:
            self.spec.validate_request(request)
        self.spec.validate_response(request, _Response(r))
        self.covered.add((self._op(method, path), expect))
        return r

    def _op(self, method: str, path: str) -> str:
        for (m, pattern), op_id in self.operations.items():
            parts, given = pattern.split("/"), path.split("?")[0].split("/")
            same_shape = m == method and len(parts) == len(given)
            if same_shape and all(p == g or p.startswith("{") for p, g in zip(parts, given, strict=True)):
                return str(op_id)
        raise AssertionError(f"{method} {path} is not in the document")


@pytest.fixture
async def checked(redis_url: str) -> Any:
    async with admin_api(redis_url) as admin:
        r = await admin.http.get("/openapi.json")
        assert r.status_code == 200
        document = r.json()
        validate_spec(document)  # a valid OpenAPI 3.1 document
        yield Checked(admin, document)


async def test_every_operation_conforms_to_the_served_openapi_document(checked: Checked, account: str) -> None:
    a = f"/v1/accounts/{account}"
    key = (await checked("POST", f"{a}/keys", 201, json={"name": "ci", "models": ["deepseek/deepseek-v4-flash"],
                                                        "expires_at": "2099-01-01", "daily_credit_cap": 3})).json()  # fmt: skip
    await checked("GET", f"{a}/keys", 200)
    await checked("PATCH", f"{a}/keys/{key['key_id']}", 200, json={"requests_per_minute": 60})
    await checked("POST", f"{a}/keys/{key['key_id']}/rotate", 200, json={"grace_seconds": 0})
    await checked("DELETE", f"{a}/keys/{key['key_id']}", 200)
    await checked("DELETE", f"{a}/keys/key_000000000000", 404)
    await checked("POST", f"{a}/keys", 400, json={"scopes": []})

    idem = {"headers": {"idempotency-key": "conformance-1"}}
    await checked("POST", f"{a}/credits/grant", 200, json={"credits": "5"}, **idem)
    replay = await checked("POST", f"{a}/credits/grant", 200, json={"credits": "5"}, **idem)
    assert replay.headers["idempotent-replayed"] == "true"
    await checked("POST", f"{a}/credits/grant", 409, json={"credits": "6"}, **idem)
    await checked("POST", f"{a}/credits/debit", 200, json={"credits": "1.5"}, headers={"idempotency-key": "d"})
    await checked("POST", f"{a}/credits/debit", 402, json={"credits": "100"}, headers={"idempotency-key": "d2"})
    await checked("GET", f"{a}/credits", 200)
    await checked("POST", f"{a}/credits/grant", 200, json={"credits": "2", "category": "promotional",
                  "expires_at": "2099-01-01T00:00:00Z", "priority": 10}, headers={"idempotency-key": "g2"})  # fmt: skip
    await checked(
        "POST", f"{a}/credits/grant", 400, json={"credits": "2", "priority": 101}, headers={"idempotency-key": "g3"}
    )
    await checked("GET", f"{a}/credits/grants", 200)

    await checked("GET", f"{a}/settings", 200)
    await checked("PATCH", f"{a}/settings", 200, json={"monthly_credit_cap": "50", "daily_request_cap": 10})
    await checked("PATCH", f"{a}/settings", 400, json={"daily_request_cap": "ten"})

    await RedisLedger(checked.admin.redis).settle(
        UsageRecord(
            "req_c",
            account,
            key["key_id"],
            "deepseek/deepseek-v4-flash",
            1,
            2,
            30,
            "0.0000003",
            "v",
            False,
            False,
            "ok",
            3,
            1_796_000_000_000,
            "2026-12-01",
            "2026-12",
        )
    )
    page = (await checked("GET", f"{a}/usage", 200, params={"limit": "1"})).json()
    assert page["data"][0]["request_id"] == "req_c"
    await checked("GET", f"{a}/usage", 400, params={"after": "x"})
    await checked("GET", "/v1/usage/accounts", 200)
    audit = (await checked("GET", f"{a}/audit", 200, params={"limit": "3"})).json()
    assert audit["next_cursor"] is not None
    await checked("GET", f"{a}/audit", 200, params={"before": audit["next_cursor"]})
    await checked("GET", "/v1/audit/operators", 200)
    await checked("GET", f"{a}/keys", 401, headers={"authorization": "Bearer crtop_wrong"})
    usage_only = await checked.admin.new_token(("usage",))
    await checked("GET", f"{a}/settings", 403, token=usage_only)

    succeeded = {op for op, status in checked.covered if status < 300}
    assert succeeded == set(checked.operations.values())
