"""Scopes and which routes need them (docs/product.md)."""

from __future__ import annotations

READ_INFERENCE = "read:inference"
WRITE_INFERENCE = "write:inference"
READ_BUILDER = "read:builder"
WRITE_BUILDER = "write:builder"
# Account management (settings changes). Agent keys never get it by default, so an
# inference key cannot raise its own caps.
ADMIN_INFERENCE = "admin:inference"

KNOWN_SCOPES = frozenset({READ_INFERENCE, WRITE_INFERENCE, READ_BUILDER, WRITE_BUILDER, ADMIN_INFERENCE})
DEFAULT_KEY_SCOPES = (READ_INFERENCE, WRITE_INFERENCE)

# Any one of the listed scopes grants the route.
CHAT = frozenset({WRITE_INFERENCE, WRITE_BUILDER})
MODELS = frozenset({READ_INFERENCE, READ_BUILDER})
SETTINGS_READ = frozenset({READ_INFERENCE, ADMIN_INFERENCE})
SETTINGS_WRITE = frozenset({ADMIN_INFERENCE})
DASHBOARD = frozenset({READ_INFERENCE, ADMIN_INFERENCE})

MODELS_PATH = "/api/v1/models"
SETTINGS_PATH = "/api/settings/inference-api"
DASHBOARD_PATH = "/api/dashboard/inference-api"
# The signed-in customer's keys (Settings -> Connections): list (read), create and revoke with
# `?key_id=` (admin; Envoy routes the sidecar's pages by exact path, so no /keys/{id}).
KEYS_PATH = "/api/settings/inference-api/keys"
KEYS_MANAGE = frozenset({ADMIN_INFERENCE})
# Each limit's use and what is left, for the caller's account and key.
LIMITS_PATH = "/api/settings/inference-api/limits"
# One end user's own limits, `?end_user=<id>` (a query parameter: Envoy routes by exact path).
END_USERS_PATH = "/api/settings/inference-api/end-users"

_ROUTES: dict[tuple[str, str], frozenset[str]] = {
    ("GET", MODELS_PATH): MODELS,
    ("GET", SETTINGS_PATH): SETTINGS_READ,
    ("PATCH", SETTINGS_PATH): SETTINGS_WRITE,
    ("GET", DASHBOARD_PATH): DASHBOARD,
    ("GET", KEYS_PATH): SETTINGS_READ,  # the list never holds a secret
    ("POST", KEYS_PATH): KEYS_MANAGE,
    ("DELETE", KEYS_PATH): KEYS_MANAGE,
    ("GET", LIMITS_PATH): SETTINGS_READ,
    ("GET", END_USERS_PATH): SETTINGS_READ,
    ("PUT", END_USERS_PATH): SETTINGS_WRITE,
    ("DELETE", END_USERS_PATH): SETTINGS_WRITE,
}


def required_scopes(method: str, path: str) -> frozenset[str] | None:
    """Scopes for one of the sidecar's own API routes, or None when the route is not one
    (metered endpoints: core/endpoints/, whose registry combines both)."""
    return _ROUTES.get((method.upper(), path.split("?", 1)[0].rstrip("/") or "/"))


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in scopes if s not in KNOWN_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}")
    if not scopes:
        raise ValueError("at least one scope is required")
    return scopes
