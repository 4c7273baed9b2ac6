"""API key records in Redis, stored by SHA-256 of the key (the key itself is never stored)."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from ..core.key_controls import KeyControls
from ..core.keys import KeyRecord, generate_key, hash_key, new_key_id
from ..core.limit_table import KEY_LIMITS
from . import keyspace as ks
from .errors import raise_if_cancelling, store_call
from .scripts import register

log = logging.getLogger(__name__)

# Revocations are announced here so every sidecar drops the key from its cache at once.
REVOCATIONS_CHANNEL = "crt:revocations"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(data: dict[bytes, bytes]) -> KeyRecord:
    d = {k.decode(): v.decode() for k, v in data.items()}
    return KeyRecord(
        key_id=d["id"],
        key_hash=d["hash"],
        account=d["account"],
        scopes=frozenset(s for s in d.get("scopes", "").split(",") if s),
        name=d.get("name", ""),
        created_at=int(d.get("created_at", "0")),
        revoked=d.get("revoked") == "1",
        retires_at_ms=int(d.get("retires_at_ms", "0") or 0),
        expires_at_ms=int(d["expires_at_ms"]) if d.get("expires_at_ms", "").isdigit() else None,
        parent=d.get("parent", ""),
    )


class UnknownKey(ValueError):
    """No such key in that account."""


class RedisKeyStore:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._set_controls = register(redis, "set_key_controls")

    @store_call
    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        data = await self._redis.hgetall(ks.key_by_hash(key_hash))
        return _record(data) if data else None

    @store_call
    async def create(
        self, account: str, scopes: tuple[str, ...], name: str = "", parent: str = ""
    ) -> tuple[str, KeyRecord]:
        """A new key; the caller shows it once. Returns (key, record). With `parent` (the id of
        the key creating it) the key is recorded among the parent's children; a parent revoked
        meanwhile takes it with it (see revoke: one of the two always sees the other)."""
        ks.check_account(account)
        key, key_id = generate_key(), new_key_id()
        record = KeyRecord(key_id, hash_key(key), account, frozenset(scopes), name, int(time.time()), parent=parent)
        await self._redis.hset(
            ks.key_by_hash(record.key_hash),
            mapping={
                "id": key_id, "hash": record.key_hash, "account": account, "scopes": ",".join(scopes),
                "name": name, "created_at": record.created_at, "revoked": "0", "parent": parent,
            },
        )  # fmt: skip
        await self._redis.set(ks.key_by_id(key_id), record.key_hash)
        await self._redis.sadd(ks.account_keys(account), key_id)
        if parent:
            await self._redis.sadd(ks.key_children(account, parent), key_id)
            creator = await self.by_id(parent)
            if creator is None or creator.revoked:
                await self.revoke(key_id)
                return key, replace(record, revoked=True)
        return key, record

    @store_call
    async def by_id(self, key_id: str) -> KeyRecord | None:
        key_hash = await self._redis.get(ks.key_by_id(key_id))
        return await self.find_by_hash(key_hash.decode()) if key_hash else None

    @store_call
    async def list(self, account: str) -> list[KeyRecord]:
        ids = sorted(i.decode() for i in await self._redis.smembers(ks.account_keys(ks.check_account(account))))
        records = [await self.by_id(i) for i in ids]
        return [r for r in records if r is not None]

    @store_call
    async def children(self, account: str, key_id: str) -> builtins.list[str]:
        """The ids of the keys this key created."""
        return sorted(_text(i) for i in await self._redis.smembers(ks.key_children(account, key_id)))

    @store_call
    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke the key (every secret it has: the current one, one rotated out in its grace
        period, one a concurrent rotation is adding) and, transitively, the keys it created."""
        record = await self.by_id(key_id)
        if record is None:
            return None
        pending, seen = [key_id], set()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            await self._revoke_secrets(current)
            pending += await self.children(record.account, current)
        return await self.by_id(key_id)

    async def _revoke_secrets(self, key_id: str) -> None:
        marked: set[str] = set()
        while True:  # again if a rotation moved the id to a new secret meanwhile (rotate re-checks too)
            current = await self._redis.get(ks.key_by_id(key_id))
            key_hash: str | None = _text(current) if current else None
            if key_hash is None or key_hash in marked:
                return
            while key_hash and key_hash not in marked:
                if not await self._redis.exists(ks.key_by_hash(key_hash)):
                    break
                await self._redis.hset(ks.key_by_hash(key_hash), "revoked", "1")
                await self._redis.publish(REVOCATIONS_CHANNEL, key_hash)
                marked.add(key_hash)
                previous = await self._redis.hget(ks.key_by_hash(key_hash), "previous")
                key_hash = _text(previous) if previous else None

    # --- per-key controls ---------------------------------------------------------------------
    async def _own_key(self, account: str, key_id: str) -> KeyRecord:
        record = await self.by_id(key_id)
        if record is None or record.account != ks.check_account(account):
            raise UnknownKey(f"no key with id {key_id} in account {account}")
        return record

    @store_call
    async def set_controls(self, account: str, key_id: str, controls: KeyControls) -> KeyControls:
        """Replace the key's controls (all fields; None removes a control). Enforced by the
        next admission; the expiry is copied to the key record for the other routes, and
        every sidecar drops the key from its cache."""
        record = await self._own_key(account, key_id)
        flat = [item for pair in sorted(controls.to_hash().items()) for item in pair]
        counts = [
            "1" if any(r.credits and r.mechanism == "cap" and r.name in controls.limits for r in KEY_LIMITS) else "0",
            "1" if any(r.mechanism == "concurrency" and r.name in controls.limits for r in KEY_LIMITS) else "0",
        ]
        keys = [ks.key_controls(account, key_id), ks.hold_info(account), ks.holds(account), ks.limiter(account)]
        await self._set_controls(keys=keys, args=[key_id, *counts, *flat])
        if controls.expires_at_ms is None:
            await self._redis.hdel(ks.key_by_hash(record.key_hash), "expires_at_ms")
        else:
            await self._redis.hset(ks.key_by_hash(record.key_hash), "expires_at_ms", str(controls.expires_at_ms))
        await self._redis.publish(REVOCATIONS_CHANNEL, record.key_hash)  # "forget": re-read the record
        return controls

    @store_call
    async def get_controls(self, account: str, key_id: str) -> KeyControls:
        """The key's controls (all None when it has none). Raises UnknownKey."""
        await self._own_key(account, key_id)
        return await self.controls_of(account, key_id)

    @store_call
    async def controls_of(self, account: str, key_id: str) -> KeyControls:
        """The stored controls without checking the key exists (the dashboard's by-key table)."""
        data = await self._redis.hgetall(ks.key_controls(ks.check_account(account), key_id))
        return KeyControls.from_hash({_text(k): _text(v) for k, v in data.items()})

    # -- rotation (provisioning API) -------------------------------------------------------

    @store_call
    async def rotate(self, key_id: str, grace_s: int, now_ms: int) -> tuple[str, KeyRecord, KeyRecord] | None:
        """A new secret for the same key id, account, scopes and name (per-key controls are kept
        by key id). The old secret works `grace_s` more seconds, then stops: its record carries
        `retires_at_ms` (checked on every use, cached or not) and expires from Redis then.
        Returns (new key, new record, old record) or None for an unknown or revoked key.

        Order: the new record first, then the id points at it, then the old one is retired; a
        crash in between leaves at worst a new secret nobody was shown."""
        old = await self.by_id(key_id)
        if old is None or old.revoked:
            return None
        data = {k.decode(): v.decode() for k, v in (await self._redis.hgetall(ks.key_by_hash(old.key_hash))).items()}
        key = generate_key()
        new_hash = hash_key(key)
        data.pop("retires_at_ms", None)
        await self._redis.hset(ks.key_by_hash(new_hash), mapping={**data, "hash": new_hash, "previous": old.key_hash})
        await self._redis.set(ks.key_by_id(key_id), new_hash)
        if _text(await self._redis.hget(ks.key_by_hash(old.key_hash), "revoked") or "") == "1":
            await self._revoke_secrets(key_id)  # revoked meanwhile: the new secret goes too
            return None
        retires = now_ms + grace_s * 1000
        await self._redis.hset(ks.key_by_hash(old.key_hash), "retires_at_ms", str(retires))
        await self._redis.pexpireat(ks.key_by_hash(old.key_hash), retires)
        await self._redis.publish(REVOCATIONS_CHANNEL, old.key_hash)  # caches reload it with its end
        new = await self.find_by_hash(new_hash)
        assert new is not None
        return key, new, replace(old, retires_at_ms=retires)


class _ForgetAll:
    """Connect callback: redis-py reconnects a dropped subscription by itself (and subscribes
    again) without telling the listener, so a reconnect is a gap like any other."""

    def __init__(self, forget: Callable[[str | None], None]) -> None:
        self._forget = forget

    def on_connect(self, connection: Any) -> None:
        self._forget(None)


async def watch_revocations(redis: Any, forget: Callable[[str | None], None], retry_s: float = 1.0) -> None:
    """Forget revoked keys as they are announced. After any gap in the subscription (a
    reconnect, silent or not) the whole cache is dropped, since announcements may have been
    missed meanwhile."""
    forget_all = _ForgetAll(forget)  # held here: redis-py keeps connect callbacks by weak reference
    interrupted = False  # warned once per outage, not once per retry
    while True:
        raise_if_cancelling()
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(REVOCATIONS_CHANNEL)
            pubsub.connection.register_connect_callback(forget_all.on_connect)
            forget(None)
            if interrupted:
                log.info("revocation feed resumed")
                interrupted = False
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    forget(data.decode() if isinstance(data, bytes) else str(data))
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            if not interrupted:
                log.warning("revocation feed interrupted (%s); key cache cleared, retrying", type(exc).__name__)
            interrupted = True
        finally:
            await pubsub.aclose()
        await asyncio.sleep(retry_s)
