"""The Starlette app for the sidecar's own routes. Errors become JSON in one handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.account_settings import SettingsStore
from ..core.auth import Authenticator, Identity, authorize
from ..core.catalog import Catalog
from ..core.clock import Clock, utc_now
from ..core.dashboard_source import DashboardSource
from ..core.end_user_limits import EndUserLimitsStore
from ..core.errors import ApiError
from ..core.scopes import MODELS, MODELS_PATH
from ..core.stores import KeyAdmin
from ..core.webhook_address import Network
from ..json_http import error_response, http_error
from .dashboard import dashboard_routes
from .end_users import end_user_routes
from .keys import key_routes
from .limits import limits_routes
from .models import model_list
from .settings import settings_routes


@dataclass(frozen=True)
class WebContext:
    auth: Authenticator
    catalog: Catalog
    clock: Clock = utc_now
    settings: SettingsStore | None = None  # None: no settings routes (e.g. a models-only app)
    dashboard: DashboardSource | None = None  # None: no dashboard API or page
    # Prometheus exposition (observability.metrics): GET /metrics. Only the sidecar's own HTTP
    # listener sets it; Envoy never routes /metrics, and the ASGI gateway leaves it unset.
    metrics: Callable[[], bytes] | None = None
    # The customer's key routes (Settings -> Connections); None: not served.
    keys: KeyAdmin | None = None
    # Non-public networks a budget webhook URL may name (Config.notify_networks).
    webhook_networks: tuple[Network, ...] = ()
    # End users' own limits; None: not served.
    end_user_limits: EndUserLimitsStore | None = None


async def identify(ctx: WebContext, request: Request, any_of: frozenset[str]) -> Identity:
    # Repeated Authorization headers joined as Envoy joins them: never a valid key (401).
    identity = await ctx.auth.identify(",".join(request.headers.getlist("authorization")) or None)
    authorize(identity, any_of)
    return identity


def build_web_app(ctx: WebContext) -> Starlette:
    async def models(request: Request) -> Response:
        await identify(ctx, request, MODELS)
        return Response(orjson.dumps(model_list(ctx.catalog, ctx.clock())), media_type="application/json")

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        return error_response(http_error(exc))

    routes = [Route(MODELS_PATH, models, methods=["GET"])]
    if ctx.settings is not None:
        routes += settings_routes(
            ctx.settings, lambda request, any_of: identify(ctx, request, any_of), ctx.webhook_networks
        )
    if ctx.end_user_limits is not None and ctx.settings is not None:
        routes += end_user_routes(
            ctx.end_user_limits, ctx.settings, lambda request, any_of: identify(ctx, request, any_of)
        )
    if ctx.dashboard is not None:
        routes += dashboard_routes(ctx.dashboard, lambda request, any_of: identify(ctx, request, any_of), ctx.clock)
        routes += limits_routes(ctx.dashboard, lambda request, any_of: identify(ctx, request, any_of), ctx.clock)
    if ctx.keys is not None:
        routes += key_routes(ctx.keys, lambda request, any_of: identify(ctx, request, any_of))
    if ctx.metrics is not None:
        exposition = ctx.metrics

        async def metrics(request: Request) -> Response:
            return Response(exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

        routes.append(Route("/metrics", metrics, methods=["GET"]))
    return Starlette(
        routes=routes,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
    )
