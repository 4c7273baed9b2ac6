"""Every setting of the sidecar, each an environment variable (prefix CRITIQUE_) with a default.

This is the only place configuration is read; `app.py` passes values on explicitly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRITIQUE_", extra="ignore")

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
    grpc_listen: str = Field("127.0.0.1:9001", description="ext_authz, ext_proc and gRPC health listen address.")
    http_listen: str = Field(
        "127.0.0.1:9002", description="Listen address of the HTTP routes (models, settings, dashboard)."
    )
    gateway_listen: str = Field(
        "127.0.0.1:8090",
        description="Listen address of the ASGI gateway (`critique-sidecar gateway`, the deployment without Envoy).",
    )
    upstream_override: str | None = Field(
        None,
        description="ASGI gateway only: host:port that receives every model's requests instead of the catalog's upstream (one shared model server, a local stack); empty uses the catalog.",
    )
    catalog_path: Path | None = Field(None, description="Model catalog TOML; empty uses the built-in catalog.toml.")
    usd_per_credit: Decimal = Field(Decimal("0.01"), gt=0, description="USD value of one credit (Solo-plan economics).")
    hold_ttl_s: int = Field(
        900,
        gt=0,
        description="Seconds an unsettled hold lives before it is released; must exceed request_deadline_s, so a hold never expires while its request is alive.",
    )
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a key lookup is cached: the longest a revoked key keeps working on another replica.",
    )
    settled_ttl_s: int = Field(
        7 * 86400,
        gt=0,
        description="Seconds a settled request id is remembered, so a replayed settlement never charges twice.",
    )
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
    health_interval_s: float = Field(1.0, gt=0, description="Seconds between store health checks.")
    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log line format on stderr: one JSON object per line, or plain text."
    )
    metrics_listen: str = Field(
        "",
        description="Own listen address for Prometheus GET /metrics (e.g. 0.0.0.0:9003 in a pod); empty serves /metrics on the HTTP listener. Envoy never routes /metrics.",
    )

    # -- provisioning API (admin listener) --------------------------------------------------
    admin_listen: str = Field(
        "",
        description="Listen address of the provisioning API (operator tokens; keys, credits, settings, usage, audit), e.g. 127.0.0.1:9004; empty turns it off. Never routed by the public Envoy listener.",
    )
    idempotency_ttl_s: int = Field(
        30 * 86400,
        gt=0,
        description="Seconds a credit grant/debit Idempotency-Key is remembered: a retry within it returns the first result and never applies twice.",
    )
    key_rotation_grace_s: int = Field(
        86400,
        ge=0,
        le=30 * 86400,
        description="Default seconds a rotated key's old secret keeps working (a rotate request may ask for 0 up to 30 days).",
    )

    # -- billing integrity (issue 14) --------------------------------------------------------
    max_n: int = Field(
        8,
        gt=0,
        le=128,
        description="Largest `n` (choices per request) accepted; larger is a 400 naming `n`. The hold is multiplied by `n`.",
    )
    request_deadline_s: int = Field(
        600,
        gt=0,
        description="Longest a chat request may run end to end: the ASGI gateway cuts it there (504 before a response, else the stream ends and is charged as interrupted); Envoy's generated route timeout is the same 600 s.",
    )

    @model_validator(mode="after")
    def _hold_outlives_request(self) -> Config:
        if self.hold_ttl_s <= self.request_deadline_s:
            raise ValueError(
                f"hold_ttl_s ({self.hold_ttl_s}) must exceed request_deadline_s ({self.request_deadline_s}): "
                "a hold must not expire while its request is alive"
            )
        return self

    @field_validator("upstream_override")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if not v:
            return None
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port")
        return v

    @field_validator("usd_per_credit")
    @classmethod
    def _finite(cls, v: Decimal) -> Decimal:
        if not v.is_finite():
            raise ValueError("must be a finite decimal")
        return v
