"""Account settings in Redis: one hash per account (keyspace.settings), read by place_hold.lua.

A PATCH is validated before anything is written and applied by one Lua script (set and
delete fields, read back the result), so it is atomic and a rejected PATCH changes nothing."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from ..core.account_settings import H_NOTIFY_SECRET, AccountSettings, SettingsPatch
from . import audit
from . import keyspace as ks
from .errors import store_call
from .scripts import register


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSettingsStore:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._patch = register(redis, "patch_settings")

    @store_call
    async def get(self, account: str) -> AccountSettings:
        data = await self._redis.hgetall(ks.settings(ks.check_account(account)))
        return AccountSettings.from_hash({_text(k): _text(v) for k, v in data.items()})

    @store_call
    async def patch(self, account: str, patch: SettingsPatch, change: audit.Change | None = None) -> AccountSettings:
        """Apply a validated partial update; returns the full settings after it. With `change`
        (who made it), the audit entry (before and after) is written by the same script."""
        to_set, to_delete = patch.hash_changes()
        args: list[str] = [str(len(to_set))]
        for field, value in sorted(to_set.items()):
            args += [field, value]
        args += to_delete
        ks.check_account(account)
        entry = "" if change is None else orjson.dumps(audit.static_fields(change, audit.SETTINGS_PATCH, account, None))
        flat = await self._patch(keys=[ks.settings(account), ks.audit(account)], args=[entry, *args])
        return AccountSettings.from_hash({_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)})

    # -- the webhook signing secret (a settings hash field the API never returns) -------------
    @store_call
    async def ensure_webhook_secret(self, account: str) -> str | None:
        secret = new_webhook_secret()
        created = await self._redis.hsetnx(ks.settings(ks.check_account(account)), H_NOTIFY_SECRET, secret)
        return secret if created else None

    @store_call
    async def set_webhook_secret(self, account: str, secret: str | None = None) -> str:
        """Set (operator-chosen) or rotate (generated) the secret; returns it."""
        secret = secret or new_webhook_secret()
        await self._redis.hset(ks.settings(ks.check_account(account)), H_NOTIFY_SECRET, secret)
        return secret


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)
