"""Wiring: turns Config into the objects both front doors share (Redis, stores, core, the
HTTP routes). Serving is elsewhere: `envoy.server` (Envoy mode) and `asgi.gateway`; their
background work is `lifecycle`. No transport imports here, so neither front door pulls in
the other's."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .admin import provisioning_on
from .config import Config
from .core.auth import Authenticator
from .core.capture import CaptureSink
from .core.catalog import Catalog, load_catalog
from .core.clock import Clock, utc_now
from .core.metering import Meter
from .core.observe import ObservedKeys, ObservedLedger
from .core.upstream import UpstreamHeader, read_credentials
from .observability import Metrics, RequestLog, Telemetry
from .store.capture_sink import JsonlFileSink, RedisStreamSink
from .store.cluster import BoundedRedisCluster
from .store.end_user_limits import RedisEndUserLimits
from .store.journal import JournalingLedger, SettlementJournal
from .store.key_store import RedisKeyStore
from .store.notify_outbox import NotifyOutbox
from .store.redis_ledger import RedisLedger
from .store.settings_store import RedisSettingsStore
from .store.usage_export import RedisUsageFeeds
from .store.usage_query import UsageQuery
from .web.app import WebContext

if TYPE_CHECKING:
    from .workers.notify import NotifyWorker
    from .workers.usage_push import UsagePushWorker

log = logging.getLogger("critique_sidecar")

REDIS_MAX_CONNECTIONS = 256  # per sidecar process


def fix_malloc_mmap_threshold(threshold: int = 256 * 1024) -> None:
    """Serve big stream chunks from mmap and give them back on free. glibc otherwise raises
    its mmap threshold after the first large free, and the heap then keeps every past peak:
    measured, RSS grew ~20-45 MB per 30 MB stream without this, flat with it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        log.info("mallopt unavailable; stream memory may keep its peaks")


def tune_garbage_collector() -> None:
    """Called once the server is built. What start-up made (modules, protobuf descriptors, the
    catalog, grpc's objects) lives as long as the process: frozen, the collector's older
    generations stop walking it again and again (bench/inprocess.py: GC time per metered
    request ~12 -> ~8 us). The young generation's threshold stays CPython's: raised to 10,000
    it cut GC time to ~3 us, but `make soak` then measured the sidecar's RSS growing ~30 MB per
    100k requests instead of ~6."""
    gc.freeze()


def connect_redis(config: Config) -> Any:
    opts: dict[str, Any] = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
        # One quick retry (a pooled connection may be stale after a Redis restart), no more:
        # past that the request fails closed with 503 well inside Envoy's timeout.
        "retry": Retry(NoBackoff(), 1),
    }
    if config.redis_cluster:
        # Same for the cluster client (100 per node, fail-fast): its commands queue too.
        return BoundedRedisCluster.from_url(
            config.redis_url, max_in_flight=REDIS_MAX_CONNECTIONS, queue_timeout_s=config.redis_timeout_s, **opts
        )
    # redis-py's default pool fails at once when every connection is in use (a burst would be
    # 503s): queue for a connection instead, up to the timeout.
    # (`?max_connections=N` in the URL overrides the size.)
    pool = BlockingConnectionPool.from_url(
        config.redis_url, max_connections=REDIS_MAX_CONNECTIONS, timeout=config.redis_timeout_s, **opts
    )
    return Redis.from_pool(pool)


@dataclass
class Components:
    """The core objects both front doors share."""

    redis: Any
    catalog: Catalog
    keys: RedisKeyStore
    auth: Authenticator
    meter: Meter
    ledger: JournalingLedger
    metrics: Metrics
    redis_ledger: RedisLedger
    tracer: Any = None  # observability.tracing.OtelTracer when CRITIQUE_OTEL_ENDPOINT is set
    # Each upstream's credential header (core/upstream.py), read once at start-up.
    credentials: dict[str, UpstreamHeader] = field(default_factory=dict)

    async def aclose(self) -> None:
        await self.redis_ledger.aclose()  # its dedicated connection is not in the pool
        await self.redis.aclose()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # export the spans still buffered


def capture_sink(config: Config, redis: Any) -> CaptureSink | None:
    if config.capture_sink == "redis":
        return RedisStreamSink(redis, config.capture_maxlen)
    if config.capture_sink == "file":
        return JsonlFileSink(config.capture_path)
    return None


def build_tracer(config: Config) -> Any:
    """The OpenTelemetry tracer when configured; OpenTelemetry is imported only then."""
    if not config.otel_endpoint:
        return None
    from .observability.tracing import otlp_tracer

    return otlp_tracer(config.otel_endpoint, config.otel_service_name)


def build_components(config: Config, redis: Any | None = None, clock: Clock = utc_now) -> Components:
    catalog = load_catalog(config.catalog_path)
    credentials = read_credentials(catalog.upstreams)  # a secret that cannot be read stops start-up here
    redis = redis if redis is not None else connect_redis(config)
    keys = RedisKeyStore(redis)
    metrics = Metrics()
    metrics.watch_journal(config.journal_path)
    observer = Telemetry(metrics, RequestLog())
    auth = Authenticator(ObservedKeys(keys, observer), cache_ttl_s=config.key_cache_ttl_s)
    redis_ledger = RedisLedger(
        redis,
        settled_ttl_s=config.settled_ttl_s,
        grant_notice_days=config.grant_notice_days,
        autopipeline=config.redis_autopipeline and not config.redis_cluster,
    )
    ledger = JournalingLedger(ObservedLedger(redis_ledger, observer), SettlementJournal(config.journal_path))
    meter = Meter(
        catalog,
        ledger,
        config.usd_per_credit,
        hold_ttl_s=config.hold_ttl_s,
        clock=clock,
        capture=capture_sink(config, redis),
        capture_timeout_s=config.capture_timeout_s,
        observer=observer,
        max_n=config.max_n,
        tracer=(tracer := build_tracer(config)),
    )
    return Components(redis, catalog, keys, auth, meter, ledger, metrics, redis_ledger, tracer, credentials)


def web_context(c: Components, config: Config, metrics: Any = None) -> WebContext:
    """The sidecar's HTTP routes (models, settings, dashboard), for either front door."""
    return WebContext(
        c.auth,
        c.catalog,
        settings=RedisSettingsStore(c.redis),
        dashboard=UsageQuery(c.redis),
        metrics=metrics,
        keys=provisioning_on(
            c.redis, known_models=frozenset(m.id for m in c.catalog.models), webhook_networks=config.notify_networks
        ),
        webhook_networks=config.notify_networks,
        end_user_limits=RedisEndUserLimits(c.redis),
    )


def notify_worker(redis: Any, config: Config, consumer: str = "") -> NotifyWorker:
    from .workers.notify import NotifyWorker, default_consumer

    return NotifyWorker(NotifyOutbox(redis, consumer or default_consumer()), config)


def usage_push_worker(redis: Any, config: Config) -> UsagePushWorker:
    from .workers.usage_push import UsagePushWorker

    return UsagePushWorker(RedisUsageFeeds(redis, config.usage_push_group, config.usage_push_consumer), config)


def background_workers(config: Config, redis: Any) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """(name, coroutine) of each worker the configuration turns on (workers/), for the process
    lifecycle (lifecycle.py) to run as tasks and cancel at shutdown."""
    work: list[tuple[str, Coroutine[Any, Any, None]]] = []
    if config.notify_worker:
        # redis-py's cluster client has no pub/sub: there, only the periodic sweep finds events
        work.append(("notify-worker", notify_worker(redis, config).run_forever(wake_channel=not config.redis_cluster)))
    if config.usage_push_worker:
        work.append(("usage-push", usage_push_worker(redis, config).run_forever()))
    return work
