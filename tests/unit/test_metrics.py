"""observability/metrics.py and core/observe.py: what the core reports becomes Prometheus metrics.

The core is driven through the Exchange (the calls both front doors make) over in-memory
stores, so each test knows exactly which decisions, charges and store calls happened."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.errors import ApiError, StoreUnavailable
from critique_sidecar.core.exchange import Exchange
from critique_sidecar.core.keys import generate_key
from critique_sidecar.core.ledger import HoldResult, UsageRecord
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.observe import NULL_OBSERVER, ObservedKeys, ObservedLedger, Observer
from critique_sidecar.devtools.stack import REPO, free_port
from critique_sidecar.observability import RequestLog, Telemetry
from critique_sidecar.observability.metrics import Metrics, journal_depth, start_metrics_server
from critique_sidecar.provisioning.observe import AdminMetrics
from critique_sidecar.web.app import WebContext, build_web_app

from ..fakes import MemoryKeys, MemoryLedger

MODEL = "deepseek/deepseek-v4-flash"
TENCENT = "tencent/hy3-preview"
SCOPES = frozenset({"read:inference", "write:inference"})


@dataclass
class Core:
    keys: MemoryKeys
    ledger: MemoryLedger
    auth: Authenticator
    meter: Meter

    def exchange(self) -> Exchange:
        return Exchange(CHAT, self.auth, self.meter)


def make_core(observer: Observer) -> Core:
    """The same wrapping app.build_components does, over in-memory stores."""
    keys, ledger = MemoryKeys(), MemoryLedger()
    auth = Authenticator(ObservedKeys(keys, observer), cache_ttl_s=0)
    meter = Meter(load_catalog(), ObservedLedger(ledger, observer), Decimal("0.01"), observer=observer)
    return Core(keys, ledger, auth, meter)


def chat(model: str = MODEL, content: str = "Summarize this retry policy in three bullets.", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra})


def completion(prompt_tokens: int = 19, completion_tokens: int = 41, text: str = "Retry three times.") -> bytes:
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


async def run_json(core: Core, key: str, body: bytes, response: bytes) -> dict[str, str]:
    """One non-streaming exchange as a front door drives it; returns the charge headers."""
    x = core.exchange()
    await x.start({"authorization": f"Bearer {key}", "x-request-id": "trace-1"})
    await x.admit(body)
    await x.response_start(200, {"content-type": "application/json"})
    charged, _ = await x.response_json(response)
    await x.close()
    return charged


async def refused(core: Core, headers: dict[str, str], body: bytes | None = None) -> str:
    x = core.exchange()
    with pytest.raises(ApiError) as err:
        await x.start(headers)
        await x.admit(body or chat())
    await x.close()
    return err.value.code


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(process=False)
    AdminMetrics(m.registry)  # the provisioning API's, in the same registry when it is served
    return m


@pytest.fixture
def core(metrics: Metrics) -> Core:
    return make_core(metrics)


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_an_admitted_request_counts_its_decision_charge_tokens_and_store_calls(
    core: Core, metrics: Metrics
) -> None:
    key = core.keys.add("acme")
    charged = await run_json(core, key, chat(), completion(19, 41))

    micro = core.ledger.records[0].credits
    assert micro > 0 and Decimal(charged["x-critique-credits-charged"]) == Decimal(micro) / 1_000_000
    assert value(metrics, "critique_requests_total", decision="allowed", code="ok") == 1
    assert value(metrics, "critique_settlements_total", model=MODEL, status="ok", endpoint=CHAT.name) == 1
    assert value(metrics, "critique_charged_microcredits_total", model=MODEL) == micro
    assert value(metrics, "critique_tokens_total", model=MODEL, kind="input") == 19
    assert value(metrics, "critique_tokens_total", model=MODEL, kind="output") == 41
    assert value(metrics, "critique_estimated_charges_total", model=MODEL) == 0
    assert value(metrics, "critique_store_seconds_count", op="hold") == 1
    assert value(metrics, "critique_store_seconds_count", op="settle") == 1
    assert value(metrics, "critique_store_seconds_count", op="key_lookup") == 1
    assert value(metrics, "critique_inflight_requests") == 0
    assert value(metrics, "critique_requests_total", decision="denied", code="invalid_api_key") == 0


async def test_charges_are_counted_per_model(core: Core, metrics: Metrics) -> None:
    key = core.keys.add("acme")
    await run_json(core, key, chat(MODEL), completion(10, 10))
    await run_json(core, key, chat(TENCENT), completion(10, 10))
    await run_json(core, key, chat(TENCENT), completion(10, 10))
    per_model = {r.model: 0 for r in core.ledger.records}
    for r in core.ledger.records:
        per_model[r.model] += r.credits
    assert value(metrics, "critique_charged_microcredits_total", model=MODEL) == per_model[MODEL]
    assert value(metrics, "critique_charged_microcredits_total", model=TENCENT) == per_model[TENCENT]
    assert value(metrics, "critique_settlements_total", model=TENCENT, status="ok", endpoint=CHAT.name) == 2


async def test_denials_are_counted_by_their_error_code(core: Core, metrics: Metrics) -> None:
    key = core.keys.add("acme")
    read_only = core.keys.add("acme", frozenset({"read:inference"}))
    assert await refused(core, {}) == "invalid_api_key"
    assert await refused(core, {"authorization": "Bearer " + generate_key()}) == "invalid_api_key"
    assert await refused(core, {"authorization": f"Bearer {read_only}"}) == "insufficient_scope"
    assert await refused(core, {"authorization": f"Bearer {key}"}, chat("no/such-model")) == "model_not_found"
    assert await refused(core, {"authorization": f"Bearer {key}"}, b"{not json") == "invalid_request"
    core.ledger.result = HoldResult("insufficient_credits", funds={"balance": 0, "floor": 0, "held": 0})
    assert await refused(core, {"authorization": f"Bearer {key}"}) == "insufficient_credits"
    core.ledger.result = HoldResult("daily_request_cap_reached")
    assert await refused(core, {"authorization": f"Bearer {key}"}) == "daily_request_cap_reached"

    assert value(metrics, "critique_requests_total", decision="denied", code="invalid_api_key") == 2
    for code in (
        "insufficient_scope",
        "model_not_found",
        "invalid_request",
        "insufficient_credits",
        "daily_request_cap_reached",
    ):
        assert value(metrics, "critique_requests_total", decision="denied", code=code) == 1, code
    assert value(metrics, "critique_denial_seconds_count") == 7
    assert value(metrics, "critique_requests_total", decision="allowed", code="ok") == 0
    assert value(metrics, "critique_inflight_requests") == 0  # refused holds never count as open


async def test_soft_mode_passes_are_allowed_with_the_cap_code(core: Core, metrics: Metrics) -> None:
    key = core.keys.add("acme")
    core.ledger.result = HoldResult(None, warnings=("daily_credit_cap_reached",))
    await run_json(core, key, chat(), completion())
    assert value(metrics, "critique_requests_total", decision="allowed", code="daily_credit_cap_reached") == 1
    assert value(metrics, "critique_requests_total", decision="allowed", code="ok") == 0


async def test_store_failures_are_counted_per_operation(core: Core, metrics: Metrics) -> None:
    key = core.keys.add("acme")
    core.keys.down = True
    assert await refused(core, {"authorization": f"Bearer {key}"}) == "service_unavailable"
    core.keys.down, core.ledger.down = False, True
    assert await refused(core, {"authorization": f"Bearer {key}"}) == "service_unavailable"

    assert value(metrics, "critique_store_errors_total", op="key_lookup") == 1
    assert value(metrics, "critique_store_errors_total", op="hold") == 1
    assert value(metrics, "critique_store_errors_total", op="settle") == 0
    assert value(metrics, "critique_requests_total", decision="denied", code="service_unavailable") == 2

    # A settlement the store refuses (the journaling ledger then keeps it) is counted too.
    x = core.exchange()
    core.ledger.down = False
    await x.start({"authorization": f"Bearer {key}"})
    await x.admit(chat())
    core.ledger.down = True
    with pytest.raises(StoreUnavailable):
        await x.response_start(500, {"content-type": "application/json"})
    assert value(metrics, "critique_store_errors_total", op="settle") == 1


async def test_a_metered_stream_is_open_until_its_exchange_closes(core: Core, metrics: Metrics) -> None:
    key = core.keys.add("acme")
    x = core.exchange()
    await x.start({"authorization": f"Bearer {key}"})
    await x.admit(chat(stream=True))
    start = await x.response_start(200, {"content-type": "text/event-stream"})
    assert start is not None and start.stream
    assert value(metrics, "critique_open_streams") == 1
    assert value(metrics, "critique_inflight_requests") == 1
    x.stream(b'data: {"choices":[{"index":0,"delta":{"content":"Retry"}}]}\n\n', False)
    await x.close()  # cut before usage arrived: charged by estimate
    await x.close()  # a second close changes nothing
    assert value(metrics, "critique_open_streams") == 0
    assert value(metrics, "critique_inflight_requests") == 0
    assert value(metrics, "critique_settlements_total", model=MODEL, status="interrupted", endpoint=CHAT.name) == 1
    assert value(metrics, "critique_estimated_charges_total", model=MODEL) == 1


async def test_the_default_observer_observes_nothing_and_costs_no_wiring() -> None:
    keys, ledger = MemoryKeys(), MemoryLedger()
    meter = Meter(load_catalog(), ledger, Decimal("0.01"))
    assert meter.observer is NULL_OBSERVER
    key = keys.add("acme")
    charged = await run_json(Core(keys, ledger, Authenticator(keys), meter), key, chat(), completion())
    assert charged and len(ledger.records) == 1


def test_journal_depth_counts_unreplayed_settlements(tmp_path: Path, metrics: Metrics) -> None:
    journal = tmp_path / "journal.jsonl"
    metrics.watch_journal(journal)
    assert journal_depth(journal) == 0 and value(metrics, "critique_journal_depth") == 0
    journal.write_bytes(b'{"request_id": "req_1"}\n{"request_id": "req_2"}\n')
    assert value(metrics, "critique_journal_depth") == 2


def test_store_up_follows_the_health_check(metrics: Metrics) -> None:
    serving = [False]
    metrics.watch_store(lambda: serving[0])
    assert value(metrics, "critique_store_up") == 0
    serving[0] = True
    assert value(metrics, "critique_store_up") == 1


async def test_metrics_and_request_log_share_one_observer(metrics: Metrics) -> None:
    seen: list[str] = []

    class Spy(RequestLog):
        def settled(self, record: UsageRecord) -> None:
            seen.append(record.request_id)

    core = make_core(Telemetry(metrics, Spy()))
    await run_json(core, core.keys.add("acme"), chat(), completion())
    assert seen == [core.ledger.records[0].request_id]
    assert value(metrics, "critique_settlements_total", model=MODEL, status="ok", endpoint=CHAT.name) == 1


# --- exposition: names, the HTTP route, the separate listener ---------------------------------

GENAI_LABELS = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"}
DOCUMENTED = re.compile(r"`((?:critique|gen_ai)_[a-z_]+)`")


def exposed_names(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith(("# TYPE critique_", "# TYPE gen_ai_"))}


def test_every_metric_is_documented_and_every_documented_metric_exists(metrics: Metrics) -> None:
    names = exposed_names(metrics.exposition().decode())  # counters as exposed: critique_..._total
    assert len(names) == 23  # 20 critique_* and 3 GenAI-convention families
    documented = set(DOCUMENTED.findall((REPO / "docs/operations.md").read_text()))
    documented -= GENAI_LABELS  # label names written like metric names
    assert names <= documented, f"undocumented in docs/operations.md: {sorted(names - documented)}"
    assert documented <= names | {f"{n}_{s}" for n in names for s in ("bucket", "count", "sum")}, sorted(
        documented - names
    )


def test_metrics_route_on_the_http_app(metrics: Metrics) -> None:
    metrics.requests.labels("denied", "invalid_api_key").inc()
    app = build_web_app(WebContext(Authenticator(MemoryKeys()), load_catalog(), metrics=metrics.exposition))
    with TestClient(app) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert 'critique_requests_total{code="invalid_api_key",decision="denied"} 1.0' in resp.text


def test_no_metrics_route_unless_asked(metrics: Metrics) -> None:
    app = build_web_app(WebContext(Authenticator(MemoryKeys()), load_catalog()))
    with TestClient(app) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_separate_metrics_listener_serves_the_registry() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, process=True)
    m.open_streams.inc(3)
    port = free_port()
    server, thread = start_metrics_server(f"127.0.0.1:{port}", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    thread.join(timeout=5)
    assert "critique_open_streams 3.0" in text
    assert "process_resident_memory_bytes" in text  # the process collector rides along
    assert not thread.is_alive()


def test_loop_thread_metrics_expose_what_prometheus_client_would() -> None:
    """loop_metrics (no lock per update) against prometheus_client's own collectors fed the same
    updates: the same exposition lines, histogram bounds included (le is <=)."""
    from prometheus_client import Counter, Gauge, Histogram, generate_latest

    from critique_sidecar.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
    from critique_sidecar.observability.metrics import GAP_BUCKETS

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hist = (LoopHistogram("gap_seconds", "Gaps.", ["model", "op"], ours, buckets=GAP_BUCKETS),
            Histogram("gap_seconds", "Gaps.", ["model", "op"], registry=theirs, buckets=GAP_BUCKETS))  # fmt: skip
    count = LoopCounter("things", "Things.", ["kind"], ours), Counter("things", "Things.", ["kind"], registry=theirs)
    gauge = LoopGauge("open", "Open.", (), ours).labels(), Gauge("open", "Open.", registry=theirs)
    values = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.025, 0.3, 9.99, 10.0, 10.5, 1e6]
    for i, value in enumerate(values):
        model = "m-a" if i % 3 else "m-b"
        for h in hist:
            h.labels(model, "chat").observe(value)
        for c in count:
            c.labels(model).inc(i)
        for g in gauge:
            g.inc(2)
            g.dec()

    def lines(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)
    assert 'gap_seconds_bucket{le="0.001",model="m-a",op="chat"} 2.0' in lines(ours)  # 0.0005, 0.001
    assert "open 11.0" in lines(ours)
