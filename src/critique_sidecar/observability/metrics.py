"""Prometheus metrics: the core's observer events (core/observe.py) as counters, gauges and
histograms in one registry per process.

Labels are bounded on purpose: decision and error code (the error table), model (the
catalog), store operation. Never an account, key or request id: those are in the request
logs, and as labels they would grow without bound."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..core.endpoints import by_name
from ..core.ledger import UsageRecord
from ..core.observe import Denial
from .loop_metrics import LoopCounter, LoopGauge, LoopHistogram

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "journal_depth", "start_metrics_server"]

# Store round trips are ~0.1-1 ms when healthy; the 0.5 s Redis timeout is the top.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A denial is decided in the first phases: key lookup, parse, one hold.
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# GenAI semantic conventions' bucket advice (token counts; request duration; time to first token).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Gaps between SSE chunks: a token every few ms when healthy; seconds when a model stalls.
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GENAI_PROVIDER = "critique"  # gen_ai.provider.name (as in the trace spans)
_OK_STATUSES = ("ok", "estimated")


class Metrics:
    """Implements core.observe.Observer by updating Prometheus collectors. What a request or a
    streamed chunk updates is a loop-thread metric (loop_metrics.py: no lock per update); the
    rest are prometheus_client's own."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        # No `*_created` series beside every counter: twice the lines for nothing a dashboard uses.
        # (A process-wide switch in prometheus_client; this registry is the process's only one.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:  # CPU, RSS, open fds, GC: what a gateway operator checks first
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.requests = LoopCounter(
            "critique_requests", "Metered requests by admission decision (allowed, denied) and reason code (ok, a soft-mode cap code, or the error code).",
            ["decision", "code"], registry=r,
        )  # fmt: skip
        self.denial_seconds = LoopHistogram(
            "critique_denial_seconds",
            "Time from a chat request's headers to its refusal.",
            (),
            registry=r,
            buckets=DECISION_BUCKETS,
        ).labels()
        self.settlements = LoopCounter(
            "critique_settlements", "Admitted requests closed, by model, status (ok, estimated, interrupted, upstream_error, cancelled) and endpoint (chat.completions, responses, completions, embeddings, messages).",
            ["model", "status", "endpoint"], registry=r,
        )  # fmt: skip
        self.charged = LoopCounter(
            "critique_charged_microcredits",
            "Micro-credits charged (1 credit = 1,000,000), by model.",
            ["model"],
            registry=r,
        )
        self.tokens = LoopCounter(
            "critique_tokens", "Tokens charged for, by model and kind (input, output).", ["model", "kind"], registry=r
        )
        self.estimated = LoopCounter(
            "critique_estimated_charges",
            "Charges made from an estimate because the response carried no usage.",
            ["model"],
            registry=r,
        )
        self.store_seconds = LoopHistogram(
            "critique_store_seconds",
            "Latency of store round trips: hold (admission), settle, key_lookup.",
            ["op"],
            registry=r,
            buckets=STORE_BUCKETS,
        )
        self.store_errors = LoopCounter(
            "critique_store_errors",
            "Store round trips that failed (Redis unreachable or timed out), by operation.",
            ["op"],
            registry=r,
        )
        self.inflight = LoopGauge(
            "critique_inflight_requests", "Admitted requests whose hold is not settled yet (this process).", (), r
        ).labels()
        self.open_streams = LoopGauge(
            "critique_open_streams", "SSE responses being metered right now (this process).", (), r
        ).labels()
        self.store_up = Gauge(
            "critique_store_up", "1 while the store answers health checks (gRPC health SERVING), else 0.", registry=r
        )
        self.journal_depth = Gauge(
            "critique_journal_depth",
            "Settlements journaled locally because the store was unreachable, not yet replayed.",
            registry=r,
        )
        self.overage = LoopCounter(
            "critique_settlement_overage_microcredits",
            "Micro-credits of reported usage beyond the hold, not charged (a model server exceeded the output bound it was sent, or reported absurd usage), by model.",
            ["model"],
            registry=r,
        )
        self.over_hold = LoopCounter(
            "critique_settlements_over_hold",
            "Settlements whose reported usage exceeded the hold (charged up to the hold), by model.",
            ["model"],
            registry=r,
        )
        self.journal_rejected = Gauge(
            "critique_journal_rejected",
            "Settlements the store refused (script error, wrong key type), set aside in <journal>.rejected for an operator.",
            registry=r,
        )
        # Sampled from Redis every 15 s (observability/backlogs.py).
        self.notify_dead_letters = Gauge(
            "critique_notify_dead_letters",
            "Budget notifications given up on, in the dead-letter list (`critique-sidecar notify dead-letters`).",
            registry=r,
        )
        self.usage_push_backlog = Gauge(
            "critique_usage_push_backlog",
            "Usage records the push consumer group has not had acknowledged (not yet delivered, or delivered and not acknowledged); 0 unless CRITIQUE_USAGE_PUSH_URL is set.",
            registry=r,
        )
        # -- the GenAI semantic conventions' metrics (OpenTelemetry names, Prometheus-style:
        # dots become underscores; attributes become labels of the same names)
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self.genai_tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "GenAI convention gen_ai.client.token.usage: tokens per request, by token type (input, output).",
            [*genai, "gen_ai_token_type"],
            registry=r,
            buckets=TOKEN_BUCKETS,
        )
        self.genai_duration = LoopHistogram(
            "gen_ai_server_request_duration",
            "GenAI convention gen_ai.server.request.duration (seconds): admission to settlement; error_type is empty on success, else the settlement status.",
            [*genai, "error_type"],
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.genai_ttft = LoopHistogram(
            "gen_ai_server_time_to_first_token",
            "GenAI convention gen_ai.server.time_to_first_token (seconds): admission to the first streamed chunk.",
            genai,
            registry=r,
            buckets=TTFT_BUCKETS,
        )
        self.chunk_gap = LoopHistogram(
            "critique_stream_chunk_gap_seconds",
            "Seconds between consecutive chunks of a metered SSE response, by model.",
            ["model"],
            registry=r,
            buckets=GAP_BUCKETS,
        )
        for op in ("hold", "settle", "key_lookup"):  # present (at 0) before the first call or failure
            self.store_errors.labels(op)
            self.store_seconds.labels(op)

    # -- gauges read at scrape time --------------------------------------------------------
    def watch_journal(self, path: Path) -> None:
        self.journal_depth.set_function(lambda: journal_depth(path))
        rejected = path.with_name(f"{path.name}.rejected")  # store/journal.py SettlementJournal.aside
        self.journal_rejected.set_function(lambda: journal_depth(rejected))

    def watch_store(self, serving: Callable[[], bool]) -> None:
        self.store_up.set_function(lambda: 1.0 if serving() else 0.0)

    # -- core.observe.Observer ----------------------------------------------------------------
    def admitted(self, model: str, warnings: tuple[str, ...]) -> None:
        self.requests.labels("allowed", warnings[0] if warnings else "ok").inc()
        self.inflight.inc()

    def denied(self, denial: Denial) -> None:
        self.requests.labels("denied", denial.code).inc()
        self.denial_seconds.observe(denial.latency_s)

    def settled(self, record: UsageRecord) -> None:
        self.inflight.dec()
        model = record.model
        self.settlements.labels(model, record.status, record.endpoint).inc()
        if record.credits:
            self.charged.labels(model).inc(record.credits)
        if record.input_tokens:
            self.tokens.labels(model, "input").inc(record.input_tokens)
        if record.output_tokens:
            self.tokens.labels(model, "output").inc(record.output_tokens)
        if record.estimated:
            self.estimated.labels(model).inc()
        if record.overage:
            self.over_hold.labels(model).inc()
            self.overage.labels(model).inc(record.overage)
        if record.status != "cancelled":  # never reached a model: no GenAI request to measure
            error = "" if record.status in _OK_STATUSES else record.status
            op = operation(record.endpoint)
            self.genai_duration.labels(op, GENAI_PROVIDER, model, error).observe(record.latency_ms / 1000)
            if record.input_tokens or record.output_tokens:
                self.genai_tokens.labels(op, GENAI_PROVIDER, model, "input").observe(record.input_tokens)
                self.genai_tokens.labels(op, GENAI_PROVIDER, model, "output").observe(record.output_tokens)

    def store_call(self, op: str, seconds: float, failed: bool) -> None:
        self.store_seconds.labels(op).observe(seconds)
        if failed:
            self.store_errors.labels(op).inc()

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def stream_chunk(self, model: str, first: bool, seconds: float, operation: str = "chat") -> None:
        if first:
            self.genai_ttft.labels(operation, GENAI_PROVIDER, model).observe(seconds)
        else:
            self.chunk_gap.labels(model).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (what GET /metrics returns)."""
        return generate_latest(self.registry)


def operation(endpoint: str) -> str:
    """gen_ai.operation.name of an endpoint (core/endpoints/): chat, text_completion, embeddings."""
    found = by_name(endpoint)
    return found.operation if found is not None else "chat"


def journal_depth(path: Path) -> int:
    """Lines in the settlement journal (one per unreplayed settlement); 0 when there is none."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start_metrics_server(listen: str, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """Serve GET /metrics on its own host:port (a daemon thread); `server.shutdown()` stops it."""
    host, _, port = listen.rpartition(":")
    return start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
