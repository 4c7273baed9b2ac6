"""Issue 20 end to end, through the real Envoy and the ASGI gateway: OpenTelemetry spans joined
to the client's trace (a real OTLP/HTTP receiver decoding the protobuf), the GenAI-convention
metrics (and the gateway's own /metrics listener), budget notifications delivered to a real
webhook receiver that fails the first attempts (queued once with two sidecars settling at
once)."""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from critique_sidecar.core.webhook_signature import verify
from critique_sidecar.devtools.stack import Stack, free_port, wait_until
from critique_sidecar.store import keyspace as ks

from .helpers import client, funded_key
from .receivers import OtlpReceiver, Received, Receiver, json_body

MODEL = "deepseek/deepseek-v4-flash"
PROMPT = "canary-prompt-7f3a: three bullets on retries"


class FlakyHooks(Receiver):
    """Answers 500 to the first `fail_first` deliveries of each event id, then 200."""

    fail_first = 2

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        super().__init__(respond=self._respond)

    def _respond(self, got: Received) -> int:
        with self.lock:
            n = self.attempts[got.headers["critique-webhook-id"]] = (
                self.attempts.get(got.headers["critique-webhook-id"], 0) + 1
            )
        return 500 if n <= self.fail_first else 200


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[FlakyHooks]:
    r = FlakyHooks()
    yield r
    r.close()


@pytest.fixture(scope="module")
def ostack(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver, hooks: FlakyHooks) -> Iterator[Stack]:
    """Two sidecars behind Envoy plus the ASGI gateway, tracing to `otlp`, each running the
    notification worker."""
    s = Stack(
        tmp_path_factory.mktemp("observe"),
        sidecar_count=2,
        front_doors=("envoy", "asgi"),
        sidecar_env={
            "CRITIQUE_OTEL_ENDPOINT": otlp.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch delay (ms): spans arrive quickly
            "CRITIQUE_NOTIFY_WORKER": "true",
            "CRITIQUE_NOTIFY_ALLOW_HTTP": "true",
            "CRITIQUE_NOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8",  # the receiver
            "CRITIQUE_NOTIFY_BACKOFF_S": "0.2",
            "CRITIQUE_GATEWAY_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def spans_of(otlp: OtlpReceiver, trace_id: str, count: int) -> list:  # type: ignore[type-arg]
    found: list = []  # type: ignore[type-arg]

    def arrived() -> bool:
        found[:] = [s for s in otlp.spans() if s.trace_id == trace_id]
        return len(found) >= count

    wait_until(arrived, f"{count} spans of trace {trace_id}", timeout=15)
    return found


@pytest.mark.parametrize("door", ["envoy", "asgi"])
@pytest.mark.parametrize("stream", [False, True])
def test_spans_join_the_callers_trace(ostack: Stack, otlp: OtlpReceiver, account: str, door: str, stream: bool) -> None:
    key = funded_key(ostack, account)
    header, trace_id, parent = traceparent()
    c = client(ostack, key).with_options(base_url=ostack.url(door) + "/api/v1", default_headers={"traceparent": header})
    if stream:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
        usage = chunks[-1].usage
    else:
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        usage = raw.parse().usage
    assert usage is not None
    request_id = raw.headers["x-critique-request-id"]

    spans = spans_of(otlp, trace_id, 4)
    by_name = {s.name: s for s in spans}
    root = by_name[f"chat {MODEL}"]
    assert root.parent_span_id == parent  # the span the client sent as traceparent
    assert root.kind == 2  # SPAN_KIND_SERVER
    assert root.service == "critique-sidecar"
    for name in ("critique.admission", "critique.upstream", "critique.settlement"):
        assert by_name[name].parent_span_id == root.span_id, name
    assert by_name["critique.upstream"].kind == 3  # SPAN_KIND_CLIENT
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL
    assert a["critique.account"] == account
    assert a["critique.key_id"].startswith("key_")
    assert a["critique.request_id"] == request_id
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
    settle = by_name["critique.settlement"].attributes
    assert settle["critique.charge_microcredits"] > 0 and settle["critique.status"] == "ok"
    assert (
        by_name["critique.admission"].attributes["critique.hold_microcredits"] >= settle["critique.charge_microcredits"]
    )
    assert by_name["critique.upstream"].attributes["http.response.status_code"] == 200
    assert by_name["critique.upstream"].attributes["critique.stream"] is stream
    if not stream:
        charged = int(Decimal(raw.headers["x-critique-credits-charged"]) * 1_000_000)
        assert settle["critique.charge_microcredits"] == charged
    for s in spans:  # never payloads
        assert not any("canary-prompt" in str(v) for v in s.attributes.values())


@pytest.mark.parametrize("door", ["envoy", "asgi"])
def test_denied_request_ends_its_trace_with_the_error(
    ostack: Stack, otlp: OtlpReceiver, account: str, door: str
) -> None:
    key = funded_key(ostack, account, credits="0")
    header, trace_id, parent = traceparent()
    resp = httpx.post(
        ostack.url(door) + "/api/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "traceparent": header},
        json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
    )
    assert resp.status_code == 402
    spans = {s.name: s for s in spans_of(otlp, trace_id, 2)}
    root = spans[f"chat {MODEL}"]
    assert root.parent_span_id == parent and root.status_code == 2  # STATUS_CODE_ERROR
    assert root.attributes["error.type"] == "insufficient_credits"
    assert spans["critique.admission"].attributes["error.type"] == "insufficient_credits"


TTFT = "gen_ai_server_time_to_first_token_count"


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def genai(model: str, **extra: str) -> tuple[tuple[str, str], ...]:
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "critique",
        "gen_ai_request_model": model,
        **extra,
    }
    return tuple(sorted(labels.items()))


def test_genai_metrics_on_both_front_doors(ostack: Stack, account: str) -> None:
    """Envoy's sidecar on its HTTP listener, the gateway on its own metrics listener only."""
    key = funded_key(ostack, account)
    gateway_metrics = f"http://{ostack.sidecar_env['CRITIQUE_GATEWAY_METRICS_LISTEN']}/metrics"
    assert httpx.get(ostack.gateway_url + "/metrics").status_code == 404  # never on the public port
    for door, url in (("envoy", f"http://127.0.0.1:{ostack.ports['http']}/metrics"), ("asgi", gateway_metrics)):
        before = scrape(url)
        c = client(ostack, key).with_options(base_url=ostack.url(door) + "/api/v1")
        # Envoy spreads requests over two sidecars: send enough that sidecar 0 sees a stream.
        for _ in range(4):
            # [[slow:20]]: the fake upstream spaces its chunks, so they reach the sidecar apart
            list(
                c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Stream. [[slow:20]]"}], stream=True
                )
            )

        def counted(url: str = url, seen: float = before.get(TTFT, {}).get(genai(MODEL), 0)) -> bool:
            return scrape(url).get(TTFT, {}).get(genai(MODEL), 0) > seen

        wait_until(counted, f"{door}: time to first token counted")
        m = scrape(url)
        assert m["gen_ai_server_request_duration_count"][genai(MODEL, error_type="")] >= 1
        assert m["gen_ai_client_token_usage_count"][genai(MODEL, gen_ai_token_type="output")] >= 1
        assert m["gen_ai_client_token_usage_sum"][genai(MODEL, gen_ai_token_type="input")] > 0
        assert m["critique_stream_chunk_gap_seconds_count"][(("model", MODEL),)] >= 1


def test_budget_notifications_through_envoy_with_two_sidecars(ostack: Stack, hooks: FlakyHooks, account: str) -> None:
    """Thresholds set by the customer's PATCH; concurrent requests over two sidecars cross 50,
    80 and 100% of the daily cap and the low-balance level: one event each, delivered signed to a
    receiver that fails the first two attempts of each."""
    key = funded_key(ostack, account)
    admin = funded_key(ostack, account, credits="0", scopes="read:inference,admin:inference")
    c = client(ostack, key)
    first = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "One."}])
    charge = int(Decimal(first.headers["x-critique-credits-charged"]) * 1_000_000)
    assert charge > 0
    balance = 10_000_000 - charge
    settings_url = ostack.base_url + "/api/settings/inference-api"
    patch = {
        "daily_credit_cap": str(Decimal(5 * charge) / 1_000_000),  # used so far: 20%
        "block_when_cap_reached": False,  # soft: requests pass over the cap, so 100% is crossed
        "notify_thresholds_percent": [50, 80, 100],
        "notify_low_balance_credits": str(Decimal(balance - 2 * charge) / 1_000_000),
        "notify_webhook_url": f"{hooks.url}/hooks/{account}",
    }
    resp = httpx.patch(settings_url, headers={"authorization": f"Bearer {admin}"}, json=patch)
    assert resp.status_code == 200, resp.text
    secret = resp.json()["notify_webhook_secret"]  # shown once
    assert secret.startswith("whsec_")
    again = httpx.patch(
        settings_url, headers={"authorization": f"Bearer {admin}"}, json={"notify_thresholds_percent": [50, 80, 100]}
    )
    assert "notify_webhook_secret" not in again.json()
    assert "notify_webhook_secret" not in httpx.get(settings_url, headers={"authorization": f"Bearer {admin}"}).text

    errors: list[BaseException] = []

    def one() -> None:
        try:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "One."}])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    def delivered() -> list[Received]:
        return [r for r in hooks.received() if r.path == f"/hooks/{account}"]

    wait_until(
        lambda: (
            len({r.headers["critique-webhook-id"] for r in delivered()}) == 4
            and all(hooks.attempts[r.headers["critique-webhook-id"]] >= 3 for r in delivered())
        ),
        "four notifications delivered",
        timeout=30,
    )
    events: dict[str, dict[str, object]] = {}
    for r in delivered():
        assert verify(secret, r.headers["critique-webhook-timestamp"], r.body, r.headers["critique-webhook-signature"])
        assert not verify(
            "whsec_wrong", r.headers["critique-webhook-timestamp"], r.body, r.headers["critique-webhook-signature"]
        )
        body = json_body(r)
        assert body["id"] == r.headers["critique-webhook-id"]
        events[body["id"]] = body
    kinds = sorted((e["kind"], e.get("threshold_percent")) for e in events.values())
    assert kinds == [
        ("daily_credit_cap", 50),
        ("daily_credit_cap", 80),
        ("daily_credit_cap", 100),
        ("low_balance", None),
    ]
    assert all(e["account"] == account for e in events.values())
    with redis.Redis.from_url(str(ostack.redis_url)) as r:
        assert r.xlen(ks.notify_outbox(account)) == 4  # queued once each, though two sidecars settled
    # Each delivered exactly when the third attempt succeeded (several workers, one group).
    ids = {r.headers["critique-webhook-id"] for r in delivered()}
    with redis.Redis.from_url(str(ostack.redis_url)) as r:  # all acknowledged: nothing will be sent again
        wait_until(lambda: r.xpending(ks.notify_outbox(account), "webhooks")["pending"] == 0, "acknowledged")
    assert all(hooks.attempts[i] == 3 for i in ids)
    assert len(delivered()) == 12


class HoldFirst(Receiver):
    """Accepts CloudEvents batches; holds the first POST open until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.first = True
        super().__init__(respond=self._respond)

    def _respond(self, got: Received) -> int:
        with self.lock:
            hold, self.first = self.first, False
        if hold:
            self.release.wait(30)
            return 503
        return 200


@pytest.mark.slow
def test_usage_push_survives_sigkill_mid_batch(ostack: Stack, account: str) -> None:
    """Records of real requests through Envoy, pushed as CloudEvents batches by `critique-sidecar
    usage push`; the worker is SIGKILLed while its first batch is in flight and restarted: every
    record arrives, and the only duplicates are the killed batch's, with the same ids."""
    key = funded_key(ostack, account)
    c = client(ostack, key)
    request_ids = set()
    for _ in range(12):
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "Hi."}])
        request_ids.add(raw.headers["x-critique-request-id"])
    receiver = HoldFirst()
    env = {
        **ostack.sidecar_environ(),
        "CRITIQUE_USAGE_PUSH_URL": receiver.url + "/ingest",
        "CRITIQUE_USAGE_PUSH_BATCH": "5",
        "CRITIQUE_USAGE_PUSH_INTERVAL_S": "0.1",
        "CRITIQUE_USAGE_PUSH_GROUP": "push-" + account,  # from the start of every stream: every record
    }
    try:
        worker = ostack._spawn("usage-push", [sys.executable, "-m", "critique_sidecar.cli", "usage", "push"], env)
        wait_until(lambda: len(receiver.received()) == 1, "the first batch in flight", proc=worker)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        receiver.release.set()
        killed = {e["id"] for e in json_body(receiver.received()[0])}
        assert len(killed) == 5

        worker = ostack._spawn("usage-push", [sys.executable, "-m", "critique_sidecar.cli", "usage", "push"], env)

        def events() -> list[dict[str, object]]:
            return [e for got in receiver.received()[1:] for e in json_body(got)]

        def arrived() -> bool:
            mine = {e["id"] for e in events() if e["subject"] == account}
            return request_ids <= mine and killed <= {e["id"] for e in events()}

        wait_until(arrived, "every record pushed after the restart", proc=worker)
        for got in receiver.received():
            assert got.headers["content-type"] == "application/cloudevents-batch+json"
            assert got.path == "/ingest"
        seen: dict[object, dict[str, object]] = {}
        for e in [e for got in receiver.received() for e in json_body(got)]:
            assert e["specversion"] == "1.0" and e["type"] == "sh.critique.inference.usage"
            assert e["id"] == e["data"]["request_id"]  # type: ignore[index]
            if e["id"] in seen:
                assert e == seen[e["id"]]  # a duplicate is the same event
            seen[e["id"]] = e
        ids = [e["id"] for got in receiver.received() for e in json_body(got)]
        dupes = {i for i in ids if ids.count(i) > 1}
        assert dupes <= killed  # duplicates only from the batch the kill interrupted
        mine = [e for e in seen.values() if e["subject"] == account]
        assert {e["id"] for e in mine} == request_ids
        assert all(e["data"]["credits"] != "0.000000" for e in mine)  # type: ignore[index]
    finally:
        ostack.stop("usage-push")
        receiver.release.set()
        receiver.close()
