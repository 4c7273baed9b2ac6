"""Every setting of the sidecar, each an environment variable (CRITIQUE_ + its name) with a default.

The settings are grouped by concern, each group with its validators beside its fields; `Config`
is all of them, read at once, with the flat names (`config.redis_url`, `CRITIQUE_REDIS_URL`).
This is the only place configuration is read; `app.py` passes values on explicitly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .core.upstream import parse_base_url
from .core.webhook_address import Network, parse_networks
from .core.wire import MAX_RESPONSE_BODY_BYTES


class RedisSettings(BaseModel):
    """The store: where Redis is and how long it may take."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis (or one Redis Cluster node) URL.")
    redis_cluster: bool = Field(False, description="Treat redis_url as a Redis Cluster entry node.")
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Redis timeout: per command on the pool, per batch for the pipelined admission/settlement connection; past it (and one retry) requests fail closed with 503.",
    )
    redis_autopipeline: bool = Field(
        True,
        description="Run admissions and settlements over one dedicated, pipelined Redis connection: concurrent ones share a write, and each skips redis-py's per-call pool and timeout work (off: the shared pool; always off for Redis Cluster).",
    )
    health_interval_s: float = Field(1.0, gt=0, description="Seconds between store health checks.")


class ListenSettings(BaseModel):
    """Where each listener is: the gRPC services Envoy calls, the HTTP routes, the ASGI gateway, the provisioning API and the metrics endpoints."""

    grpc_listen: str = Field("127.0.0.1:9001", description="ext_authz, ext_proc and gRPC health listen address.")
    http_listen: str = Field(
        "127.0.0.1:9002", description="Listen address of the HTTP routes (models, settings, dashboard)."
    )
    gateway_listen: str = Field(
        "127.0.0.1:8090",
        description="Listen address of the ASGI gateway (`critique-sidecar gateway`, the deployment without Envoy).",
    )
    admin_listen: str = Field(
        "",
        description="Listen address of the provisioning API (operator tokens; keys, credits, settings, usage, audit), e.g. 127.0.0.1:9004; empty turns it off. Never routed by the public Envoy listener.",
    )
    metrics_listen: str = Field(
        "",
        description="Own listen address for Prometheus GET /metrics (e.g. 0.0.0.0:9003 in a pod); empty serves /metrics on the HTTP listener. Envoy never routes /metrics.",
    )
    gateway_metrics_listen: str = Field(
        "",
        description="ASGI gateway only: own listen address for Prometheus GET /metrics (e.g. 127.0.0.1:9003); empty serves no metrics (never on the gateway's public port).",
    )


class GrpcTlsSettings(BaseModel):
    """TLS on the gRPC listener (Envoy -> sidecar; envoy/credentials.py)."""

    grpc_tls_cert: Path | None = Field(
        None,
        description="PEM certificate (chain) of the gRPC listener; set with grpc_tls_key to serve TLS. Re-read when it changes.",
    )
    grpc_tls_key: Path | None = Field(None, description="PEM private key of grpc_tls_cert.")
    grpc_tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle: when set, the gRPC listener requires client certificates signed by it (mTLS).",
    )

    @model_validator(mode="after")
    def _tls_files_together(self) -> Self:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("CRITIQUE_GRPC_TLS_CERT and CRITIQUE_GRPC_TLS_KEY go together")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError(
                "CRITIQUE_GRPC_TLS_CLIENT_CA needs CRITIQUE_GRPC_TLS_CERT and CRITIQUE_GRPC_TLS_KEY (mTLS is TLS first)"
            )
        return self


class UpstreamSettings(BaseModel):
    """The model servers: the catalog that names them, and the ASGI gateway's overrides."""

    catalog_path: Path | None = Field(None, description="Model catalog TOML; empty uses the built-in catalog.toml.")
    upstream_override: str | None = Field(
        None,
        description="ASGI gateway only: a base URL (e.g. http://vllm.internal:8000/v1) that receives every model's requests instead of the catalog's upstreams (one shared model server); empty uses the catalog.",
    )
    upstream_connect_timeout_s: float = Field(
        5.0,
        gt=0,
        description="ASGI gateway only: longest a new connection to a model server may take before the request fails with 502. Timed on the gateway's event loop, so it also covers the loop's own delay under load (Envoy's connect timer is not): keep it well above a network connect time.",
    )

    @field_validator("upstream_override")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parse_base_url(v)  # ValueError says what is wrong
        return v


class MeteringSettings(BaseModel):
    """Money and the request's lifetime: the credit rate, holds, settlement idempotency, `n`, the largest metered response."""

    usd_per_credit: Decimal = Field(Decimal("0.01"), gt=0, description="USD value of one credit (Solo-plan economics).")
    hold_ttl_s: int = Field(
        900,
        gt=0,
        description="Seconds an unsettled hold lives before it is released; must exceed request_deadline_s, so a hold never expires while its request is alive.",
    )
    request_deadline_s: int = Field(
        600,
        gt=0,
        description="Longest a chat request may run end to end: the ASGI gateway cuts it there (504 before a response, else the stream ends and is charged as interrupted); Envoy's generated route timeout is the same 600 s.",
    )
    settled_ttl_s: int = Field(
        7 * 86400,
        gt=0,
        description="Seconds a settled request id is remembered, so a replayed settlement never charges twice.",
    )
    max_n: int = Field(
        8,
        gt=0,
        le=128,
        description="Largest `n` (choices per request) accepted; larger is a 400 naming `n`. The hold is multiplied by `n`.",
    )
    max_response_bytes: int = Field(
        MAX_RESPONSE_BODY_BYTES,
        ge=65536,
        description="Largest non-streaming response metered: the ASGI door holds it for the charge headers, the gRPC listener takes Envoy's buffered body up to it (keep it equal to envoy-config's --max-response-bytes). Past it the response passes unmetered and the request is charged its hold's bound for output.",
    )

    @field_validator("usd_per_credit")
    @classmethod
    def _finite(cls, v: Decimal) -> Decimal:
        if not v.is_finite():
            raise ValueError("must be a finite decimal")
        return v

    @model_validator(mode="after")
    def _hold_outlives_request(self) -> Self:
        if self.hold_ttl_s <= self.request_deadline_s:
            raise ValueError(
                f"CRITIQUE_HOLD_TTL_S ({self.hold_ttl_s}) must exceed CRITIQUE_REQUEST_DEADLINE_S "
                f"({self.request_deadline_s}): a hold must not expire while its request is alive"
            )
        return self


class KeySettings(BaseModel):
    """API keys and the operator actions: the key cache, rotation grace, credit-change idempotency."""

    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a key lookup is cached: the longest a revoked key keeps working on another replica.",
    )
    key_rotation_grace_s: int = Field(
        86400,
        ge=0,
        le=30 * 86400,
        description="Default seconds a rotated key's old secret keeps working (a rotate request may ask for 0 up to 30 days).",
    )
    idempotency_ttl_s: int = Field(
        30 * 86400,
        gt=0,
        description="Seconds a credit grant/debit Idempotency-Key is remembered: a retry within it returns the first result and never applies twice.",
    )


class UsageSettings(BaseModel):
    """Usage records: retention, the trim, and the journal of settlements Redis could not take."""

    usage_stream_maxlen: int = Field(
        1_000_000,
        gt=0,
        description="Per-account usage-stream length above which retention logs a warning (a consumer group is behind: unacknowledged records are never trimmed).",
    )
    usage_retention_days: int = Field(
        30,
        gt=0,
        le=3650,
        description="Days usage records (activity log, billing stream) are kept; older ones are trimmed once every consumer group has acknowledged them.",
    )
    usage_trim_interval_s: float = Field(
        3600.0,
        ge=0,
        description="Seconds between the sidecar's retention trims of the usage streams; 0 turns them off (then run `critique-sidecar usage trim`).",
    )
    journal_path: Path = Field(
        Path("critique-journal.jsonl"),
        description="Append-only journal of settlements that could not reach Redis; replayed when it returns.",
    )


class CaptureSettings(BaseModel):
    """Opted-in training captures."""

    capture_sink: Literal["redis", "file", "off"] = Field(
        "redis",
        description="Where opted-in training captures go: a per-account Redis stream, a JSONL file, or off (then no request gets the opt-in price).",
    )
    capture_path: Path = Field(
        Path("critique-capture.jsonl"), description="JSONL file for captures when capture_sink=file."
    )
    capture_maxlen: int = Field(
        100_000,
        gt=0,
        description="Approximate entries kept per account in the Redis capture stream (bounded retention).",
    )
    capture_timeout_s: float = Field(
        0.25, gt=0, description="Longest a capture write may take; past it the request is charged the normal price."
    )


class ObservabilitySettings(BaseModel):
    """Logs and traces."""

    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log line format on stderr: one JSON object per line, or plain text."
    )
    otel_endpoint: str = Field(
        "",
        description="OTLP/HTTP base URL (e.g. http://otel-collector:4318) to export OpenTelemetry traces of chat requests to (spans posted to <url>/v1/traces); empty turns tracing off. Needs the `otel` extra (pip install 'critique-sidecar[otel]').",
    )
    otel_service_name: str = Field("critique-sidecar", description="service.name of the exported spans.")


class NotificationSettings(BaseModel):
    """Budget notifications (webhooks) and their delivery worker."""

    notify_worker: bool = Field(
        False,
        description="Run the budget-notification delivery worker inside `serve` / `gateway` (else run `critique-sidecar notify-worker`).",
    )
    notify_max_attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="Delivery attempts of a budget notification before it goes to the dead-letter list.",
    )
    notify_backoff_s: float = Field(
        1.0, gt=0, description="First retry delay of a failed webhook delivery; doubled per attempt (capped at 300 s)."
    )
    notify_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook delivery attempt.")
    grant_notice_days: int = Field(
        7,
        ge=0,
        le=3650,
        description="A credit grant is announced to the account's webhook (grant.expiring, once per grant) when an admission finds it this many days or fewer from its expiry; 0: never.",
    )
    notify_allow_http: bool = Field(
        False,
        description="Deliver budget webhooks to http:// URLs too (otherwise https:// only; for tests and private networks).",
    )
    notify_allowed_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR) budget webhooks may reach besides public addresses, e.g. 10.20.0.0/16 for a private deployment or 127.0.0.0/8 for tests; empty: public addresses only. Refused: a literal non-public webhook URL when set (400), and at delivery any host name resolving to a non-public address (dead letter).",
    )

    @field_validator("notify_allowed_networks")
    @classmethod
    def _networks(cls, v: str) -> str:
        parse_networks(v)  # ValueError names the bad entry
        return v

    @property
    def notify_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.notify_allowed_networks)


class UsagePushSettings(BaseModel):
    """The CloudEvents usage push and its worker."""

    usage_push_url: str = Field(
        "",
        description="HTTP endpoint that receives usage records as CloudEvents batches (`critique-sidecar usage push`, or in-process with usage_push_worker); empty: off.",
    )
    usage_push_worker: bool = Field(False, description="Run the usage push worker inside `serve` / `gateway`.")
    usage_push_group: str = Field(
        "cloudevents", description="Consumer group the usage push worker reads the usage streams with."
    )
    usage_push_consumer: str = Field(
        "push-1",
        description="Consumer name of this usage push worker (stable across restarts: it resumes its own pending records).",
    )
    usage_push_batch: int = Field(
        100, ge=1, le=10_000, description="Most CloudEvents per POST of the usage push worker."
    )
    usage_push_interval_s: float = Field(
        1.0, gt=0, description="Seconds the usage push worker waits when there is nothing new."
    )
    usage_push_source: str = Field(
        "/critique-sidecar", description="CloudEvents `source` attribute of pushed usage events (a URI reference)."
    )

    @model_validator(mode="after")
    def _push_needs_url(self) -> Self:
        if self.usage_push_worker and not self.usage_push_url:
            raise ValueError("CRITIQUE_USAGE_PUSH_WORKER needs CRITIQUE_USAGE_PUSH_URL")
        return self


class RecycleSettings(BaseModel):
    """Recycling (recycle.py): a safety net for native memory growth we cannot fix."""

    recycle_after_requests: int = Field(
        0,
        ge=0,
        description="Drain and exit after about this many ext_proc/ext_authz requests (up to 10% fewer, so sibling processes do not recycle together), for the supervisor to restart the process; 0 never. Needs sibling processes behind Envoy (docs/operations.md).",
    )
    recycle_above_rss_mb: int = Field(
        0,
        ge=0,
        description="Drain and exit once resident memory exceeds this many MB (checked every few seconds); 0 never.",
    )
    recycle_drain_s: float = Field(
        3.0,
        ge=0,
        description="When recycling: seconds of NOT_SERVING before the process stops taking new streams (at least Envoy's health-check interval x unhealthy threshold + timeout), and then until a second passes without a new stream.",
    )


class Config(
    RedisSettings,
    ListenSettings,
    GrpcTlsSettings,
    UpstreamSettings,
    MeteringSettings,
    KeySettings,
    UsageSettings,
    CaptureSettings,
    ObservabilitySettings,
    NotificationSettings,
    UsagePushSettings,
    RecycleSettings,
    BaseSettings,
):
    """All the settings, from the environment (CRITIQUE_<NAME>) or keyword arguments."""

    model_config = SettingsConfigDict(env_prefix="CRITIQUE_", extra="ignore")
