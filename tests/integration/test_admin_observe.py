"""The provisioning API's own request log line and metrics (provisioning/observe.py), on the
app the admin listener serves: route templates as labels, never an account or a token."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry

from critique_sidecar.admin import provisioning
from critique_sidecar.config import Config
from critique_sidecar.provisioning.api import build_admin_app
from critique_sidecar.provisioning.observe import AdminMetrics, Observed

from .provisioning_kit import admin_api


async def test_each_request_is_logged_and_counted_by_route_template(
    redis_url: str, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    async with admin_api(redis_url) as admin:
        served = build_admin_app(provisioning(Config(), admin.redis), admin.tokens)  # as admin_server builds it
        app = Observed(served, AdminMetrics(registry))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http:
            with caplog.at_level(logging.INFO, logger="critique_sidecar.provisioning"):
                ok = await http.get(f"/v1/accounts/{account}/credits", headers=admin.headers())
                refused = await http.get(f"/v1/accounts/{account}/credits", headers={"authorization": "Bearer x"})
                missing = await http.get("/v1/nothing", headers=admin.headers())
    assert (ok.status_code, refused.status_code, missing.status_code) == (200, 401, 404)
    route = "/v1/accounts/{account}/credits"
    count = registry.get_sample_value
    assert count("critique_admin_requests_total", {"method": "GET", "route": route, "status": "200"}) == 1
    assert count("critique_admin_requests_total", {"method": "GET", "route": route, "status": "401"}) == 1
    assert count("critique_admin_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}) == 1
    assert count("critique_admin_request_seconds_count", {"method": "GET", "route": route}) == 2
    lines = [r for r in caplog.records if r.name == "critique_sidecar.provisioning"]
    assert [r.fields["status"] for r in lines] == [200, 401, 404]  # type: ignore[attr-defined]
    first = lines[0].fields  # type: ignore[attr-defined]
    assert first["route"] == route and first["request_id"] == ok.headers["x-request-id"]
    assert all(account not in r.getMessage() + str(r.fields) for r in lines)  # type: ignore[attr-defined]
