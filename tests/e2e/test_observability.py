"""Operations through the real stack: the sidecar's /metrics after real traffic (exact charge
totals), Envoy never exposing it, one JSON log line per request without payload, and the gRPC
health services the Kubernetes probes call."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.envoy.server import LIVENESS_SERVICE

from .helpers import client, funded_key

DEEPSEEK = "deepseek/deepseek-v4-flash"
REQUIRED = {"request_id", "account", "key_id", "model", "decision", "code", "credits", "estimated", "latency_ms"}


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['http']}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def quiet(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape once every admitted request has settled and every metered stream has closed
    (it times out if a hold or a stream gauge never comes back to 0)."""

    def settled() -> bool:
        m = scrape(stack)
        return sample(m, "critique_inflight_requests") == 0 and sample(m, "critique_open_streams") == 0

    wait_until(settled, "open requests and streams to close", timeout=15)
    return scrape(stack)


def log_lines(stack: Stack) -> list[dict[str, object]]:
    out = []
    for line in (stack.workdir / "sidecar.log").read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_metrics_count_real_traffic_exactly(stack: Stack, account: str) -> None:
    key = funded_key(stack, account)
    before = quiet(stack)
    c = client(stack, key)
    micro = 0
    tokens = {"input": 0, "output": 0}
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model=DEEPSEEK, messages=[{"role": "user", "content": "Three bullets on retries."}]
        )
        resp = raw.parse()
        micro += int(Decimal(raw.headers["x-critique-credits-charged"]) * 1_000_000)
        assert resp.usage is not None
        tokens["input"] += resp.usage.prompt_tokens
        tokens["output"] += resp.usage.completion_tokens
    chunks = list(
        c.chat.completions.create(
            model=DEEPSEEK,
            messages=[{"role": "user", "content": "Stream it."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    tokens["input"] += usage.prompt_tokens
    tokens["output"] += usage.completion_tokens
    bad = httpx.post(
        f"{stack.base_url}/api/v1/chat/completions",
        json={"model": "no/such-model", "messages": []},
        headers={"authorization": f"Bearer {key}"},
    )
    assert bad.status_code == 404
    after = quiet(stack)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("critique_requests_total", decision="allowed", code="ok") == 3
    assert delta("critique_requests_total", decision="denied", code="model_not_found") == 1
    assert delta("critique_settlements_total", model=DEEPSEEK, status="ok", endpoint="chat.completions") == 3
    assert delta("critique_tokens_total", model=DEEPSEEK, kind="input") == tokens["input"]
    assert delta("critique_tokens_total", model=DEEPSEEK, kind="output") == tokens["output"]
    streamed = delta("critique_charged_microcredits_total", model=DEEPSEEK) - micro
    assert streamed > 0  # the stream's charge (its header is in-band) on top of the two JSON charges
    assert (
        delta("critique_store_seconds_count", op="hold") == 3
        and delta("critique_store_seconds_count", op="settle") == 3
    )
    assert sample(after, "critique_store_up") == 1 and sample(after, "critique_journal_depth") == 0


def test_envoy_does_not_expose_the_sidecar_metrics(stack: Stack) -> None:
    resp = httpx.get(f"{stack.base_url}/metrics")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert "critique_requests_total" not in resp.text


def test_one_json_log_line_per_request_and_never_the_payload(stack: Stack, account: str) -> None:
    canary = "CANARY-" + uuid.uuid4().hex
    key = funded_key(stack, account)
    c = client(stack, key)
    raw = c.chat.completions.with_raw_response.create(
        model=DEEPSEEK, messages=[{"role": "user", "content": f"keep {canary} secret"}]
    )
    request_id = raw.headers["x-critique-request-id"]
    denied = httpx.post(
        f"{stack.base_url}/api/v1/chat/completions",
        json={"model": canary, "messages": [{"role": "user", "content": canary}]},
        headers={"authorization": f"Bearer {key}", "x-request-id": f"trace-{canary[-8:]}"},
    )
    assert denied.status_code == 404

    for name in ("sidecar.log", "envoy.log"):
        assert canary not in (stack.workdir / name).read_text(), name
    lines = log_lines(stack)
    [settled] = [line for line in lines if line.get("request_id") == request_id]
    assert settled.keys() >= REQUIRED and settled["event"] == "settled"
    assert settled["account"] == account and str(settled["key_id"]).startswith("key_")
    assert settled["model"] == DEEPSEEK and settled["decision"] == "allowed" and settled["estimated"] is False
    assert settled["credits"] == raw.headers["x-critique-credits-charged"]
    mine = [line for line in lines if line.get("account") == account and line.get("event") == "denied"]
    assert len(mine) == 1 and mine[0]["code"] == "model_not_found" and mine[0]["decision"] == "denied"
    assert isinstance(mine[0]["trace_id"], str) and mine[0]["trace_id"]  # Envoy's x-request-id, for its access log


@pytest.mark.parametrize("service", ["", LIVENESS_SERVICE])
def test_grpc_health_services_the_probes_call(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def health(stack: Stack, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        return int(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        )


def test_a_redis_outage_shows_in_metrics_and_readiness_but_not_liveness(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Its own stack: Redis is stopped under it."""
    stack = Stack(tmp_path_factory.mktemp("outage"), sidecar_env={"CRITIQUE_KEY_CACHE_TTL_S": "0"})
    try:
        stack.start()
        key = funded_key(stack, "acme")
        ok = httpx.post(
            f"{stack.base_url}/api/v1/chat/completions",
            json={"model": DEEPSEEK, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert ok.status_code == 200
        before = scrape(stack)
        assert sample(before, "critique_store_up") == 1

        stack.stop("redis")
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: health(stack, "") == not_serving, "readiness to follow the store")
        assert health(stack, LIVENESS_SERVICE) == serving  # a Redis outage never restarts the sidecar
        assert sample(scrape(stack), "critique_store_up") == 0

        # Envoy stops sending requests to a NOT_SERVING sidecar: a fast JSON 503.
        refused = httpx.post(
            f"{stack.base_url}/api/v1/chat/completions",
            json={"model": DEEPSEEK, "messages": []},
            headers={"authorization": f"Bearer {key}"},
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        # Asked directly, the sidecar fails closed as well, and counts the failed key lookup.
        check = auth_pb2.CheckRequest()
        http = check.attributes.request.http
        http.method, http.path = "GET", "/api/v1/models"
        http.headers["authorization"] = f"Bearer {key}"
        mid = scrape(stack)
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
            answer = auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=5)
        assert answer.denied_response.status.code == 503
        after = scrape(stack)
        assert (
            sample(after, "critique_store_errors_total", op="key_lookup")
            - sample(mid, "critique_store_errors_total", op="key_lookup")
            == 1
        )
        assert sample(before, "critique_store_errors_total", op="key_lookup") == 0
    finally:
        stack.stop()
