"""Wires everything: Redis, stores, core, gRPC servicers, health and the HTTP routes.

The only place that turns Config into running objects."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import Config
from .core.auth import Authenticator
from .core.capture import CaptureSink
from .core.catalog import Catalog, load_catalog
from .core.clock import Clock, utc_now
from .core.metering import Meter
from .core.observe import ObservedKeys, ObservedLedger
from .envoy.authz import AuthorizationServicer
from .envoy.ext_proc import ExtProcServicer
from .envoy.health import StoreHealth
from .observability import Metrics, RequestLog, Telemetry
from .observability.metrics import start_metrics_server
from .store.capture_sink import JsonlFileSink, RedisStreamSink
from .store.cluster import BoundedRedisCluster
from .store.journal import JournalingLedger, SettlementJournal
from .store.key_store import RedisKeyStore, watch_revocations
from .store.redis_ledger import RedisLedger
from .store.settings_store import RedisSettingsStore
from .store.usage_query import UsageQuery
from .store.usage_retention import UsageRetention
from .web.app import WebContext, build_web_app

log = logging.getLogger("critique_sidecar")

REDIS_MAX_CONNECTIONS = 256  # per sidecar process

GRPC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# gRPC health service name that is SERVING for as long as the process serves gRPC, store or
# not: the liveness probe's. (Readiness uses "", which follows the store and the drain.)
LIVENESS_SERVICE = "liveness"
# Seconds open streams get to finish and settle after SIGTERM (deploy/ stop timeouts cover it).
DRAIN_GRACE_S = 30


def fix_malloc_mmap_threshold(threshold: int = 256 * 1024) -> None:
    """Serve big stream chunks from mmap and give them back on free. glibc otherwise raises
    its mmap threshold after the first large free, and the heap then keeps every past peak:
    measured, RSS grew ~20-45 MB per 30 MB stream without this, flat with it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        log.info("mallopt unavailable; stream memory may keep its peaks")


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
    # redis-py's default pool fails at once past 100 connections in use, which turned bursts
    # of >100 in-flight requests into 503s: queue for a connection instead, up to the timeout.
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

    async def aclose(self) -> None:
        await self.redis_ledger.aclose()  # its dedicated connection is not in the pool
        await self.redis.aclose()


def capture_sink(config: Config, redis: Any) -> CaptureSink | None:
    if config.capture_sink == "redis":
        return RedisStreamSink(redis, config.capture_maxlen)
    if config.capture_sink == "file":
        return JsonlFileSink(config.capture_path)
    return None


def build_components(config: Config, redis: Any | None = None, clock: Clock = utc_now) -> Components:
    redis = redis if redis is not None else connect_redis(config)
    catalog = load_catalog(config.catalog_path)
    keys = RedisKeyStore(redis)
    metrics = Metrics()
    metrics.watch_journal(config.journal_path)
    observer = Telemetry(metrics, RequestLog())
    auth = Authenticator(ObservedKeys(keys, observer), cache_ttl_s=config.key_cache_ttl_s)
    redis_ledger = RedisLedger(
        redis,
        settled_ttl_s=config.settled_ttl_s,
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
    )
    return Components(redis, catalog, keys, auth, meter, ledger, metrics, redis_ledger)


def web_context(c: Components, metrics: Any = None) -> WebContext:
    """The sidecar's HTTP routes (models, settings, dashboard), for either front door."""
    return WebContext(
        c.auth, c.catalog, settings=RedisSettingsStore(c.redis), dashboard=UsageQuery(c.redis), metrics=metrics
    )


async def serve(config: Config) -> None:
    fix_malloc_mmap_threshold()
    c = build_components(config)
    # Envoy may hand over up to a model cluster's buffer limit (2 MiB) in one body message.
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES)]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(c.auth), server)
    ext_proc = ExtProcServicer(c.auth, c.meter)
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ext_proc, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    store_health = StoreHealth(health_servicer, c.redis.ping, config.health_interval_s)
    server.add_insecure_port(config.grpc_listen)
    c.metrics.watch_store(lambda: store_health.serving)
    metrics_server = (
        start_metrics_server(config.metrics_listen, c.metrics.registry)[0] if config.metrics_listen else None
    )
    exposition = None if metrics_server else c.metrics.exposition  # else GET /metrics on the HTTP listener

    host, _, port = config.http_listen.rpartition(":")
    web = uvicorn.Server(
        uvicorn.Config(
            build_web_app(web_context(c, metrics=exposition)),
            host=host,
            port=int(port),
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,  # uvicorn's loggers go through ours (observability.logs)
        )
    )
    web.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own signals

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await server.start()
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await store_health.check_once()
    await c.ledger.replay()  # a journal left by an earlier run (e.g. killed during an outage)
    tasks = [
        asyncio.create_task(store_health.run()),
        asyncio.create_task(web.serve()),
        asyncio.create_task(c.ledger.replay_forever()),
    ]
    if not config.redis_cluster:  # redis-py's cluster client has no pub/sub: the cache TTL bounds revocation
        tasks.append(asyncio.create_task(watch_revocations(c.redis, c.auth.forget)))
    if config.usage_trim_interval_s > 0:
        retention = UsageRetention(c.redis, config.usage_retention_days, warn_length=config.usage_stream_maxlen)
        tasks.append(asyncio.create_task(retention.run_forever(config.usage_trim_interval_s)))
    log.info("critique-sidecar serving grpc=%s http=%s", config.grpc_listen, config.http_listen)
    await stop.wait()

    log.info("draining")
    await store_health.drain()
    await server.stop(grace=DRAIN_GRACE_S)  # open streams finish and settle
    await ext_proc.drain()  # settlements of streams that ended just before (they run in tasks)
    web.should_exit = True
    for task in tasks[:1] + tasks[2:]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.ledger.replay()  # flush what can be flushed; the rest stays journaled for next start
    await c.aclose()
    if metrics_server is not None:
        await asyncio.to_thread(metrics_server.shutdown)
        metrics_server.server_close()
    log.info("stopped")
