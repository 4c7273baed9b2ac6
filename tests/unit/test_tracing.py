"""Tracing is optional: off, OpenTelemetry is never imported and the exchange holds no trace;
on, each chat request's spans follow the W3C traceparent it came with (SDK in memory here; the
end-to-end tests export over OTLP/HTTP to a real receiver)."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.observability.tracing import OtelTracer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def test_off_never_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from critique_sidecar.app import build_components\n"
        "from critique_sidecar.config import Config\n"
        "c = build_components(Config(redis_url='redis://127.0.0.1:1/0'))\n"
        "assert c.meter.tracer is None and c.tracer is None\n"
        # (redis-py imports parts of OpenTelemetry by itself when installed: only tracing counts)
        "tracing = ('critique_sidecar.observability.tracing', 'opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(tracing))\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": ""}, check=False)
    assert out.returncode == 0, out.stderr


def tracer() -> tuple[OtelTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracer(provider), exporter


def record(status: str = "ok") -> UsageRecord:
    return UsageRecord(
        "req_1", "acme", "key_1", "m", 11, 22, 1515, "0.00001515", "v5/m/list", False, False, status, 5, 0, "d", "mo"
    )


def test_spans_of_one_request_join_the_incoming_trace() -> None:
    t, exported = tracer()
    trace = t.begin({"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    trace.admitted("req_1", "acme", "key_1", "m", 100, 5000)
    trace.response(200, True)
    trace.settling()
    trace.settled(record(), True)
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {"chat m", "critique.admission", "critique.upstream", "critique.settlement"}
    root = spans["chat m"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT and root.parent.is_remote
    for name in ("critique.admission", "critique.upstream", "critique.settlement"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id
    assert root.attributes is not None
    assert root.attributes["gen_ai.usage.output_tokens"] == 22 and root.attributes["critique.account"] == "acme"
    assert root.status.status_code == StatusCode.UNSET


def test_without_traceparent_a_new_trace_and_errors_are_marked() -> None:
    t, exported = tracer()
    trace = t.begin({})
    trace.admitted("req_1", "acme", "key_1", "m", 100, 5000)
    trace.response(502, False)
    trace.settling()
    trace.settled(record("upstream_error"), True)
    spans = {s.name: s for s in exported.get_finished_spans()}
    root = spans["chat m"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans.values()} == {root.context.trace_id}
    assert root.attributes is not None and root.attributes["error.type"] == "upstream_error"
    assert spans["critique.upstream"].status.status_code == StatusCode.ERROR


def test_a_malformed_traceparent_is_ignored() -> None:
    t, exported = tracer()
    t.begin({"traceparent": "00-zzzz-not-a-trace"}).denied("invalid_api_key", None, None, None)
    (root, admission) = sorted(exported.get_finished_spans(), key=lambda s: s.name)
    assert root.parent is None or admission.parent is None
    assert all(s.status.status_code == StatusCode.ERROR for s in (root, admission))


def test_unsampled_requests_make_no_spans() -> None:
    t, exported = tracer()
    trace = t.begin({"traceparent": f"00-{TRACE_ID}-{PARENT}-00"})  # the caller did not sample it
    trace.admitted("req_1", "acme", "key_1", "m", 100, 5000)
    trace.settling()
    trace.settled(record(), True)
    assert exported.get_finished_spans() == ()
