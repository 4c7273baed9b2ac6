"""The registry: every metered endpoint, by product path. The exchange, both front doors, the
Envoy config generator, ext_authz, metrics, traces and usage records read it; nothing else
names an endpoint. Adding one: a module defining its `Endpoint`, and a line below."""

from __future__ import annotations

from .. import scopes
from . import chat
from .base import Endpoint, Limits, MeteredBody

ENDPOINTS: tuple[Endpoint, ...] = (chat.ENDPOINT,)

_BY_PATH = {e.path: e for e in ENDPOINTS}
_BY_NAME = {e.name: e for e in ENDPOINTS}
NAMES = tuple(_BY_NAME)


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


__all__ = ["ENDPOINTS", "NAMES", "Endpoint", "Limits", "MeteredBody", "by_name", "by_path", "required_scopes"]
