"""Envoy mode: the gRPC services (ext_authz, ext_proc, health) and the HTTP routes, until SIGTERM.

Shutdown order (SIGTERM or SIGINT):
  1. readiness turns NOT_SERVING, so Envoy sends new requests to other sidecars;
  2. the gRPC server stops taking streams; open ones get DRAIN_GRACE_S to finish and settle;
  3. settlements still running after their streams ended complete;
  4. only then the HTTP listener closes (the models, settings and dashboard routes answer
     throughout the drain), and the lifecycle stops its background work.
uvicorn installs its own SIGTERM handler whenever it serves; ours must stay in charge, so
the HTTP listener runs without it (HttpListener)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import uvicorn
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..app import Components, build_components, fix_malloc_mmap_threshold, tune_garbage_collector, web_context
from ..config import Config
from ..core.wire import DRAIN_GRACE_S, MAX_REQUEST_BODY_BYTES
from ..lifecycle import Lifecycle
from ..observability.metrics import start_metrics_server
from ..recycle import Recycler, recycler
from ..store.warmup import warm_up
from ..web.app import build_web_app
from .authz import AuthorizationServicer
from .credentials import add_grpc_port
from .ext_proc import ExtProcServicer
from .health import StoreHealth
from .request_id import add_ext_proc

log = logging.getLogger("critique_sidecar")

# Envoy hands over a buffered JSON response whole, in one body message (CRITIQUE_MAX_RESPONSE_BYTES).
GRPC_MESSAGE_OVERHEAD = 1024 * 1024
# gRPC health service name that is SERVING for as long as the process serves gRPC, store or
# not: the liveness probe's. (Readiness uses "", which follows the store and the drain.)
LIVENESS_SERVICE = "liveness"


class HttpListener(uvicorn.Server):
    """uvicorn without its signal handlers: serve() decides when the HTTP listener closes."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def grpc_server(
    config: Config, c: Components, recycle: Recycler | None = None
) -> tuple[grpc.aio.Server, ExtProcServicer, StoreHealth]:
    server = grpc.aio.server(
        interceptors=[recycle] if recycle else None,  # it counts requests
        options=[
            ("grpc.so_reuseport", 0),
            # a request body or a buffered JSON response, whichever Envoy's stream limit allows
            (
                "grpc.max_receive_message_length",
                max(config.max_response_bytes, MAX_REQUEST_BODY_BYTES) + GRPC_MESSAGE_OVERHEAD,
            ),
        ],
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(c.auth), server)
    ext_proc = ExtProcServicer(c.auth, c.meter, c.credentials)
    add_ext_proc(ext_proc, server)  # notes Envoy's x-request-id for the request logs
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    store_health = StoreHealth(health_servicer, c.redis.ping, config.health_interval_s)
    add_grpc_port(server, config.grpc_listen, config.grpc_tls_cert, config.grpc_tls_key, config.grpc_tls_client_ca)
    return server, ext_proc, store_health


def http_listener(config: Config, c: Components, metrics: Any) -> HttpListener:
    host, _, port = config.http_listen.rpartition(":")
    return HttpListener(
        uvicorn.Config(
            build_web_app(web_context(c, config, metrics=metrics)),
            host=host,
            port=int(port),
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,  # uvicorn's loggers go through ours (observability.logs)
        )
    )


async def serve(config: Config) -> None:
    fix_malloc_mmap_threshold()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    c = build_components(config)
    recycle = recycler(config.recycle_after_requests, config.recycle_above_rss_mb, config.recycle_drain_s)
    server, ext_proc, store_health = grpc_server(config, c, recycle)
    c.metrics.watch_store(lambda: store_health.serving)
    metrics_server = (
        start_metrics_server(config.metrics_listen, c.metrics.registry)[0] if config.metrics_listen else None
    )
    exposition = None if metrics_server else c.metrics.exposition  # else GET /metrics on the HTTP listener
    web = http_listener(config, c, exposition)
    lifecycle = Lifecycle(config, c)

    await server.start()
    await store_health.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await warm_up(c.redis)  # before readiness: a burst right after a start finds connections open
    await store_health.check_once()
    await lifecycle.start()
    health_task = asyncio.create_task(store_health.run())
    web_task = asyncio.create_task(web.serve())
    # When due, drains (NOT_SERVING until Envoy has moved the traffic) and sets `stop` (recycle.py).
    recycle_task = asyncio.create_task(recycle.run(store_health.drain, stop)) if recycle else None
    tune_garbage_collector()
    log.info("critique-sidecar serving grpc=%s http=%s", config.grpc_listen, config.http_listen)
    await stop.wait()

    async def close_http() -> None:
        web.should_exit = True
        await web_task
        health_task.cancel()
        if recycle_task is not None:
            recycle_task.cancel()
        await asyncio.gather(health_task, *([recycle_task] if recycle_task else []), return_exceptions=True)

    log.info("draining")
    await lifecycle.stop(
        store_health.drain,
        lambda: server.stop(grace=DRAIN_GRACE_S),  # open streams finish and settle
        ext_proc.drain,  # settlements of streams that ended just before (they run in tasks)
        close_http,
    )
    if metrics_server is not None:
        await asyncio.to_thread(metrics_server.shutdown)
        metrics_server.server_close()
    log.info("stopped")
