"""Wiring of the operator side: the operator actions (provisioning.service.Provisioning) on the
Redis stores, and the admin listener that serves the provisioning API with its own uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from .config import Config
from .core.catalog import load_catalog
from .provisioning.api import build_admin_app
from .provisioning.observe import AdminMetrics, Observed
from .provisioning.service import Provisioning
from .store.accounts import RedisAccounts
from .store.audit import RedisAuditTrail
from .store.credit_changes import RedisCreditChanges
from .store.key_store import RedisKeyStore
from .store.operator_tokens import RedisOperatorTokens
from .store.settings_store import RedisSettingsStore
from .store.usage_records import RedisUsageRecords


def provisioning_on(
    redis: Any,
    *,
    idempotency_ttl_s: int = 30 * 86400,
    rotation_grace_s: int = 86400,
    known_models: frozenset[str] | None = None,
    webhook_networks: tuple[Any, ...] = (),
) -> Provisioning:
    """The operator actions on one Redis (or Cluster)."""
    return Provisioning(
        keys=RedisKeyStore(redis),
        settings=RedisSettingsStore(redis),
        accounts=RedisAccounts(redis),
        credit_changes=RedisCreditChanges(redis, idempotency_ttl_s),
        audit_trail=RedisAuditTrail(redis),
        usage_records=RedisUsageRecords(redis),
        rotation_grace_s=rotation_grace_s,
        known_models=known_models,
        webhook_networks=webhook_networks,
    )


def provisioning(config: Config, redis: Any) -> Provisioning:
    return provisioning_on(
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
