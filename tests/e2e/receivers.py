"""Real HTTP receivers the observability tests start: an OTLP/HTTP trace receiver decoding the
real protobuf, a webhook receiver that can fail the first attempts, and a CloudEvents batch
receiver that can hold a POST open (to kill the sender mid-batch)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from critique_sidecar.devtools.stack import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """One ThreadingHTTPServer; `respond(received) -> status` decides each answer."""

    respond: Callable[[Received], int] = lambda _: 200
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer.lock:
                    outer.requests.append(got)
                status = outer.respond(got)
                reply = outer.reply_body(got)
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply_body(self, got: Received) -> bytes:
        return b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    service: str


class OtlpReceiver(Receiver):
    """POST /v1/traces with an OTLP ExportTraceServiceRequest (protobuf)."""

    def reply_body(self, got: Received) -> bytes:
        return bytes(ExportTraceServiceResponse().SerializeToString())

    def spans(self) -> list[Span]:
        out = []
        for got in self.received():
            assert got.path == "/v1/traces"
            assert got.headers["content-type"] == "application/x-protobuf"
            req = ExportTraceServiceRequest.FromString(got.body)
            for rs in req.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs: dict[str, Any] = {}
                        for a in s.attributes:
                            v = a.value
                            attrs[a.key] = getattr(v, str(v.WhichOneof("value")))
                        out.append(
                            Span(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.kind,
                                attrs,
                                s.status.code,
                                service,
                            )
                        )
        return out


def json_body(got: Received) -> Any:
    return orjson.loads(got.body)
