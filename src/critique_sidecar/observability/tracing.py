"""OpenTelemetry tracing of metered requests (the optional `otel` extra): the core's Tracer
(core/observe.py) as OpenTelemetry spans exported over OTLP/HTTP (protobuf).

Off unless CRITIQUE_OTEL_ENDPOINT is set; this module is imported only then, so a sidecar
without the extra never loads OpenTelemetry. Per metered request, one trace joined to the
caller's through the W3C `traceparent` header (Envoy's, or the client's, which Envoy passes
to ext_proc):

    <operation> <model>            SERVER   the request at the sidecar, parent: traceparent (the
                                            endpoint's gen_ai.operation.name: chat, text_completion,
                                            embeddings)
      critique.admission           INTERNAL key check, parse, hold (one Lua call)
      critique.upstream            CLIENT   admission to the end of the model's response
      critique.settlement          INTERNAL the charge (one Lua call)

Attributes, on the request's span: the GenAI semantic conventions (gen_ai.operation.name,
gen_ai.provider.name, gen_ai.request.model, gen_ai.request.max_tokens,
gen_ai.usage.input_tokens, gen_ai.usage.output_tokens; error.type when it failed) and ours
(critique.account, critique.key_id, critique.request_id, critique.charge_microcredits,
critique.usd, critique.status, critique.estimated, critique.price_version); on the phase spans
their own: critique.hold_microcredits (admission), http.response.status_code and
critique.stream (upstream), critique.charge_microcredits, critique.status and
critique.applied (settlement). Never prompt or completion text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..core.ledger import UsageRecord

_PROPAGATOR = TraceContextTextMapPropagator()
PROVIDER_NAME = "critique"  # gen_ai.provider.name: the metered inference API as a provider


class _Getter:
    """Reads the front door's header mapping (lower-case names) for the W3C propagator."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return [value] if value is not None else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _Getter()


class OtelRequestTrace:
    """The spans of one metered request (core.observe.RequestTrace)."""

    __slots__ = ("_admission", "_operation", "_root", "_settlement", "_tracer", "_upstream", "recording")

    def __init__(self, tracer: trace.Tracer, headers: Mapping[str, str], operation: str = "chat") -> None:
        self._tracer = tracer
        self._operation = operation
        parent = _PROPAGATOR.extract(headers, getter=_GETTER)  # type: ignore[arg-type]
        self._root = tracer.start_span(
            operation, parent, kind=SpanKind.SERVER, attributes={"gen_ai.operation.name": operation}
        )
        self.recording = self._root.is_recording()
        self._admission: Span | None = self._child("critique.admission", SpanKind.INTERNAL) if self.recording else None
        self._upstream: Span | None = None
        self._settlement: Span | None = None

    def _child(self, name: str, kind: SpanKind) -> Span:
        return self._tracer.start_span(name, trace.set_span_in_context(self._root, Context()), kind=kind)

    def admitted(self, request_id: str, account: str, key_id: str, model: str, max_tokens: int, hold: int) -> None:
        # The request's attributes go on its root span once; the phase spans carry only their
        # own (each attribute costs the SDK a validation: ~1/4 of tracing's CPU was repeats).
        self._root.update_name(f"{self._operation} {model}")
        self._root.set_attributes(
            {
                "gen_ai.provider.name": PROVIDER_NAME,
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": max_tokens,
                "critique.account": account,
                "critique.key_id": key_id,
                "critique.request_id": request_id,
            }
        )
        if self._admission is not None:
            self._admission.set_attribute("critique.hold_microcredits", hold)
            self._admission.end()
            self._admission = None
        self._upstream = self._child("critique.upstream", SpanKind.CLIENT)

    def denied(self, code: str, account: str | None, key_id: str | None, model: str | None) -> None:
        attrs: dict[str, Any] = {"error.type": code, "critique.decision": "denied"}
        if account is not None:
            attrs["critique.account"] = account
        if key_id is not None:
            attrs["critique.key_id"] = key_id
        if model is not None:
            attrs["gen_ai.request.model"] = model
            self._root.update_name(f"{self._operation} {model}")
        for span in (self._admission, self._root):
            if span is not None:
                span.set_attributes(attrs)
                span.set_status(Status(StatusCode.ERROR, code))
                span.end()
        self._admission = None

    def response(self, status: int, stream: bool) -> None:
        if self._upstream is not None:
            self._upstream.set_attributes({"http.response.status_code": status, "critique.stream": stream})
            if status >= 500:
                self._upstream.set_status(Status(StatusCode.ERROR, f"upstream status {status}"))

    def settling(self) -> None:
        if self._upstream is not None:
            self._upstream.end()
            self._upstream = None
        self._settlement = self._child("critique.settlement", SpanKind.INTERNAL)

    def settled(self, record: UsageRecord, applied: bool) -> None:
        if self._settlement is not None:
            self._settlement.set_attributes(
                {
                    "critique.charge_microcredits": record.credits,
                    "critique.status": record.status,
                    "critique.applied": applied,
                }
            )
            self._settlement.end()
            self._settlement = None
        root = self._root
        root.set_attributes(
            {
                "gen_ai.usage.input_tokens": record.input_tokens,
                "gen_ai.usage.output_tokens": record.output_tokens,
                "critique.charge_microcredits": record.credits,
                "critique.usd": record.usd,
                "critique.status": record.status,
                "critique.estimated": record.estimated,
                "critique.price_version": record.price_version,
            }
        )
        if record.status not in ("ok", "estimated"):
            root.set_attribute("error.type", record.status)
        root.end()


class UnsampledTrace:
    """A request the sampler left out: every phase is a no-op."""

    __slots__ = ()

    def admitted(self, request_id: str, account: str, key_id: str, model: str, max_tokens: int, hold: int) -> None:
        pass

    def denied(self, code: str, account: str | None, key_id: str | None, model: str | None) -> None:
        pass

    def response(self, status: int, stream: bool) -> None:
        pass

    def settling(self) -> None:
        pass

    def settled(self, record: UsageRecord, applied: bool) -> None:
        pass


UNSAMPLED = UnsampledTrace()


class OtelTracer:
    """core.observe.Tracer over an OpenTelemetry SDK tracer provider of our own (never the
    process-global one: an embedding app keeps its own)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("critique_sidecar")

    def begin(self, headers: Mapping[str, str], operation: str = "chat") -> OtelRequestTrace | UnsampledTrace:
        trace_ = OtelRequestTrace(self._tracer, headers, operation)
        # Not sampled (the sampler, or a caller's traceparent that says so): its phase spans
        # would record nothing either, so skip making them.
        return trace_ if trace_.recording else UNSAMPLED

    def shutdown(self) -> None:
        """Export what is buffered, then stop (called once at process exit)."""
        self.provider.shutdown()


def otlp_tracer(endpoint: str, service_name: str) -> OtelTracer:
    """Spans batched (in a thread of the SDK's) and posted as OTLP/HTTP protobuf to
    `<endpoint>/v1/traces`. Batch size and delay follow the SDK's OTEL_BSP_* variables."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelTracer(provider)
