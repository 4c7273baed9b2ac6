"""The admin listener: the provisioning API served by its own uvicorn server."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from ..config import Config
from ..core.catalog import load_catalog
from ..store.operator_tokens import RedisOperatorTokens
from .api import build_admin_app
from .observe import AdminMetrics, Observed
from .service import Provisioning


def provisioning(config: Config, redis: Any) -> Provisioning:
    return Provisioning(
        redis,
        idempotency_ttl_s=config.idempotency_ttl_s,
        rotation_grace_s=config.key_rotation_grace_s,
        known_models=frozenset(m.id for m in load_catalog(config.catalog_path).models),
        webhook_networks=config.notify_networks,
    )


def admin_server(config: Config, redis: Any, registry: CollectorRegistry | None = None) -> uvicorn.Server | None:
    """The server for CRITIQUE_ADMIN_LISTEN, or None when it is not set. The caller runs
    `serve()` and sets `should_exit` to stop it. Each request is logged, and counted in
    `registry` (the process's metrics) when given."""
    if not config.admin_listen:
        return None
    host, _, port = config.admin_listen.rpartition(":")
    metrics = AdminMetrics(registry) if registry is not None else None
    app = Observed(build_admin_app(provisioning(config, redis), RedisOperatorTokens(redis)), metrics)
    return _QuietServer(
        uvicorn.Config(
            app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="off", log_config=None
        )
    )


class _QuietServer(uvicorn.Server):
    """Leaves signals to the process: uvicorn would otherwise install its own handlers while it
    serves (and re-raise the signal when it stops)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
