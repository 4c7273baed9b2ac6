"""The registry: every metered endpoint, by product path. The exchange, both front doors, the
Envoy config generator, ext_authz, metrics, traces and usage records read it; nothing else
names an endpoint. Adding one: a module defining its `Endpoint`, and a line below."""

from __future__ import annotations

from .. import scopes
from . import chat, completions, embeddings, messages, responses
from .base import Endpoint, Limits, MeteredBody

ENDPOINTS: tuple[Endpoint, ...] = (
    chat.ENDPOINT,
    responses.ENDPOINT,
    completions.ENDPOINT,
    embeddings.ENDPOINT,
    messages.ENDPOINT,
)

_BY_PATH = {e.path: e for e in ENDPOINTS}
_BY_NAME = {e.name: e for e in ENDPOINTS}
NAMES = tuple(_BY_NAME)


# Under this prefix nothing reaches a model server but a metered endpoint: any other path is
# refused (404) in the product's error shape, on both front doors (the sidecar's own
# GET /api/v1/models is served beside them).
API_PREFIX = "/api/v1/"
# Paths under a metered endpoint's that are not served, and why (most specific first).
NOT_SERVED = {
    "/api/v1/responses/": (
        "Stored responses are not kept: this API serves the Responses API without storing responses "
        "(store: false), so there is nothing to retrieve, delete or cancel"
    ),
    "/api/v1/messages/": (
        "Not served: counting tokens would reach a model server without being metered; the usage of "
        "each message is in its response"
    ),
    API_PREFIX: "No such endpoint: under /api/v1/ this API serves "
    + ", ".join(f"POST {e.path}" for e in ENDPOINTS)
    + " and GET /api/v1/models",
}


def not_served(path: str) -> str | None:
    """Why a path under the product's API is refused; None when it is not under it."""
    return next((why for prefix, why in NOT_SERVED.items() if path.startswith(prefix)), None)


def by_path(path: str) -> Endpoint | None:
    """The metered endpoint at a product path (query string aside), if any."""
    return _BY_PATH.get(path.split("?", 1)[0])


def by_name(name: str) -> Endpoint | None:
    return _BY_NAME.get(name)


def required_scopes(method: str, path: str) -> frozenset[str] | None:
    """Scopes for a product route: a metered endpoint (POST) or one of the sidecar's own API
    routes; None when the route is neither."""
    endpoint = by_path(path.split("?", 1)[0].rstrip("/"))
    if endpoint is not None:
        return endpoint.scopes if method.upper() == "POST" else None
    return scopes.required_scopes(method, path)


__all__ = [
    "API_PREFIX",
    "ENDPOINTS",
    "NAMES",
    "NOT_SERVED",
    "Endpoint",
    "Limits",
    "MeteredBody",
    "by_name",
    "by_path",
    "not_served",
    "required_scopes",
]
