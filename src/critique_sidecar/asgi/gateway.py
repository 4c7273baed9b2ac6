"""The reference gateway: the whole product with no Envoy, as one ASGI app.

    critique-sidecar gateway --listen 127.0.0.1:8090
    uvicorn --factory critique_sidecar.asgi.gateway:create_app    # or any ASGI server

    Middleware                         the metered endpoints (the same core as behind Envoy)
      Routes
        a metered endpoint        ->   Forward: to the catalog model's upstream, picked by the
                                       x-critique-model header the exchange sets, at the
                                       endpoint's path on the upstream's base URL (replicas in
                                       turn); streamed through (an httpx keep-alive pool per
                                       upstream, asgi/_pool.py), SSE never buffered
        the web app's routes      ->   the sidecar's own Starlette app (models, settings, dashboard)
        anything else             ->   JSON 404, as Envoy's catch-all route

Upstream failures before a response: connect errors 502 upstream_error, timeouts 504
upstream_timeout (the messages of Envoy's local-reply mappers). A stream the upstream cuts is
cut for the client too (the exchange charges what was delivered); a client that hangs up
cancels the upstream request."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..app import Components, build_components, fix_malloc_mmap_threshold, tune_garbage_collector, web_context
from ..config import Config
from ..core.catalog import Catalog
from ..core.endpoints import by_path, not_served
from ..core.errors import ApiError
from ..core.upstream import BaseUrl, UpstreamServer, parse_base_url
from ..core.wire import DRAIN_GRACE_S, MODEL_HEADER
from ..lifecycle import Lifecycle
from ..web.app import build_web_app
from ._http import MAX_BODY_BYTES, RawHeaders, header_dict, read_body, send_error
from ._pool import ReservingTransport
from .middleware import Middleware

log = logging.getLogger(__name__)

# As the generated Envoy config's route idle_timeout. The connect timeout is
# Config.upstream_connect_timeout_s: measured on this event loop, not in the kernel.
IDLE_TIMEOUT_S = 120.0
REQUEST_DEADLINE_S = 600.0  # as the route timeout; Config.request_deadline_s (below the hold TTL)
POOL_CONNECTIONS = 512  # per gateway process; past it requests queue for a connection
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", MODEL_HEADER}  # the model header only routes
_NOT_RETURNED = HOP_BY_HOP | {"date", "server"}  # the ASGI server writes its own


class UpstreamCut(Exception):
    """The upstream broke off a response already under way: the client's is cut off too."""


def ssl_context(server: UpstreamServer) -> ssl.SSLContext:
    """Verification on: the upstream's CA file, else the system's trust store; the host name
    is checked against the base URL's (SNI from it too)."""
    if server.ca_file is not None:
        return ssl.create_default_context(cafile=str(server.ca_file))
    return ssl.create_default_context()


def upstream_client(connect_timeout_s: float, tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS, keepalive_expiry=60
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(IDLE_TIMEOUT_S, connect=connect_timeout_s),
        transport=ReservingTransport(limits, tls),  # an idle connection goes to one waiting request (_pool.py)
        trust_env=False,  # never an HTTP(S)_PROXY from the environment
        follow_redirects=False,
    )


class Upstream:
    """One model server as the gateway reaches it: its replicas in turn (round robin; a replica
    that refuses the connection passes the request to the next), over a pool of its own."""

    def __init__(self, name: str, replicas: tuple[BaseUrl, ...], client: httpx.AsyncClient) -> None:
        self.name = name
        self.replicas = replicas
        self.client = client
        self._next = 0

    def order(self) -> list[BaseUrl]:
        i = self._next % len(self.replicas)
        self._next = i + 1
        return [*self.replicas[i:], *self.replicas[:i]]


def upstreams(
    catalog: Catalog, connect_timeout_s: float, override: str | None = None, client: httpx.AsyncClient | None = None
) -> dict[str, Upstream]:
    """Model id -> its upstream (one pool per upstream; `override`, a base URL, serves every
    model instead; `client`, a test's, every upstream)."""
    if override:
        one = Upstream("override", (parse_base_url(override),), client or upstream_client(connect_timeout_s))
        return {m.id: one for m in catalog.models}
    by_name: dict[str, Upstream] = {}
    for name, server in catalog.upstreams.items():
        tls = ssl_context(server) if server.tls else None
        by_name[name] = Upstream(name, server.replicas(), client or upstream_client(connect_timeout_s, tls))
    return {m.id: by_name[m.upstream] for m in catalog.models}


def _forwarded(scope: Scope) -> RawHeaders:
    """The request headers for the upstream: end-to-end ones only, plus where it came from."""
    skip = _NOT_FORWARDED | {"x-forwarded-for", "x-forwarded-proto"}
    headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in skip]
    if scope.get("client"):
        chain = [v for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", b", ".join([*chain, scope["client"][0].encode("latin-1")])))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
    return headers


class Forward:
    """Send a metered request to its model's upstream, at the endpoint's path on the upstream's
    base URL, and stream the answer back."""

    def __init__(self, routes: Mapping[str, Upstream], deadline_s: float = REQUEST_DEADLINE_S) -> None:
        self.routes = dict(routes)
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = by_path(scope["path"])
        upstream = self.routes.get(header_dict(scope["headers"]).get(MODEL_HEADER, ""))
        if upstream is None or endpoint is None:  # as Envoy's unrouted route
            await send_error(send, ApiError("service_unavailable", "The request could not be routed to a model"))
            return
        body = await read_body(receive, MAX_BODY_BYTES)
        if body is None:
            return
        query = scope.get("query_string", b"").decode("latin-1")
        cut: httpx.TransportError | None = None
        url = ""
        started = _Started(send)
        # The overall deadline: no request outlives it, so none outlives its hold (whose TTL
        # the configuration keeps longer). Before a response: 504; during one: cut, and the
        # exchange charges what was delivered.
        with anyio.move_on_after(self.deadline_s) as deadline:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
                replicas = upstream.order()
                for i, replica in enumerate(replicas):
                    url = replica.url(endpoint.suffix) + (f"?{query}" if query else "")
                    # Not client.build_request: that would add httpx's default headers (accept-encoding among them).
                    request = httpx.Request(scope["method"], url, headers=_forwarded(scope), content=body)
                    last = i == len(replicas) - 1
                    refused, cut = await self._exchange(
                        upstream.client, request, started.send, last, endpoint.error_shape
                    )
                    if not refused:
                        break
                tasks.cancel_scope.cancel()
        if deadline.cancelled_caught:
            if not started.started:
                await _fail(send, endpoint.error_shape, "upstream_timeout", "The model server timed out")
                return
            raise UpstreamCut(f"{url}: past the request deadline of {self.deadline_s:g}s")
        if cut is not None:
            raise UpstreamCut(f"{url}: {type(cut).__name__}") from cut

    async def _exchange(
        self, client: httpx.AsyncClient, request: httpx.Request, send: Send, last: bool, shape: str
    ) -> tuple[bool, httpx.TransportError | None]:
        """(refused, cut): refused, the connection failed before anything was sent and another
        replica may try (not `last`); cut, the response broke off under way. Failures are
        answered in the endpoint's error `shape`."""
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            log.warning("upstream %s unreachable: %s", request.url, type(exc).__name__)
            if not last:
                return True, None
            await _fail(send, shape, "upstream_error", "The model server failed to answer")
            return False, None
        except httpx.TimeoutException:
            await _fail(send, shape, "upstream_timeout", "The model server timed out")
            return False, None
        except httpx.TransportError as exc:
            log.warning("upstream %s failed: %s", request.url, type(exc).__name__)
            await _fail(send, shape, "upstream_error", "The model server failed to answer")
            return False, None
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in _NOT_RETURNED]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():  # as it arrives; content-encoding untouched
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            return False, exc
        finally:
            await response.aclose()  # back to the pool before the end goes out (then a disconnect may cancel us)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return False, None


async def _fail(send: Send, shape: str, code: str, message: str) -> None:
    error = ApiError(code, message)
    error.shape = shape
    await send_error(send, error)


class _Started:
    """Passes messages on and remembers whether the response has started."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class Routes:
    """Metered endpoints to `metered`; what the web app routes (any method) to it; anything
    else a JSON 404 (nothing reaches a model server around the meter)."""

    def __init__(self, metered: ASGIApp, web: ASGIApp, web_routes: list[BaseRoute]) -> None:
        self.metered = metered
        self.web = web
        self.web_routes = web_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = by_path(scope["path"])
            if endpoint is not None:
                if scope["method"] != "POST":
                    await _fail(send, endpoint.error_shape, "method_not_allowed", "Use POST on this endpoint")
                    return
                await self.metered(scope, receive, send)
                return
            if all(route.matches(scope)[0] == Match.NONE for route in self.web_routes):
                await send_error(send, ApiError("not_found", not_served(scope["path"]) or "No such route"))
                return
        await self.web(scope, receive, send)


class Gateway:
    """The composed gateway. Its background work (the same Lifecycle as Envoy mode's) runs
    through the ASGI lifespan; at shutdown, after the server has let open requests finish,
    their settlements complete, the upstream pool closes and the lifecycle stops."""

    def __init__(
        self, components: Components, web: Starlette, config: Config, client: httpx.AsyncClient | None = None
    ) -> None:
        self.components = components
        self.config = config
        self.routes = upstreams(components.catalog, config.upstream_connect_timeout_s, config.upstream_override, client)
        forward = Forward(self.routes, config.request_deadline_s)
        self.app = Middleware(
            Routes(forward, web, list(web.routes)), components=components, max_response_bytes=config.max_response_bytes
        )
        self.lifecycle = Lifecycle(config, components)
        self._metrics_server: Any = None  # the gateway's own /metrics listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.app(scope, receive, send)

    async def startup(self) -> None:
        await self.lifecycle.start()
        if self.config.gateway_metrics_listen:  # /metrics on its own listener, never the public port
            from ..observability.metrics import start_metrics_server

            self._metrics_server = start_metrics_server(
                self.config.gateway_metrics_listen, self.components.metrics.registry
            )[0]

    async def shutdown(self) -> None:
        # settlements of requests the server cut off, then the upstream pool
        clients = {id(u.client): u.client for u in self.routes.values()}.values()

        async def close_pools() -> None:
            await asyncio.gather(*(c.aclose() for c in clients))

        await self.lifecycle.stop(self.app.drain, close_pools)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(config: Config | None = None) -> Gateway:
    """The gateway from the environment's settings (an app factory for any ASGI server)."""
    config = config or Config()
    c = build_components(config)
    web = build_web_app(web_context(c, config))  # no /metrics here: never public (see WebContext)
    return Gateway(c, web, config)


async def serve(config: Config, listen: str) -> None:
    """Run the gateway with uvicorn until SIGINT/SIGTERM; open requests finish first."""
    fix_malloc_mmap_threshold()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per forwarded request
    host, _, port = listen.rpartition(":")
    server = uvicorn.Config(
        create_app(config),
        host=host,
        port=int(port),
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=DRAIN_GRACE_S,
    )
    log.info("critique-sidecar gateway serving http://%s", listen)
    tune_garbage_collector()  # our own process only: an app embedding the middleware keeps its GC
    await uvicorn.Server(server).serve()
