"""GET / POST / DELETE /api/settings/inference-api/keys: the signed-in customer's own keys
(Settings -> Connections). Listing needs read:inference or admin:inference, creating and
revoking admin:inference; only ever on the key's own account (never from the request).

GET lists the keys (never a secret); POST creates one (same body as the provisioning API's
create: name, scopes, expiry, model allowlist, per-key caps) and returns its secret once;
DELETE `?key_id=key_...` revokes one. Every change is in the account's audit trail, made by
actor type `key` (the calling key's id). The same service functions as the provisioning API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.audit import Actor, Change
from ..core.auth import Identity
from ..core.errors import ApiError
from ..core.scopes import KEYS_MANAGE, KEYS_PATH, SETTINGS_READ
from ..provisioning import schemas as s
from ..provisioning.api import decode_body, request_id_of
from ..provisioning.service import Provisioning
from .settings import now_ms

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


def _json(model: s._Strict, status: int = 200) -> Response:
    return Response(
        orjson.dumps(model.model_dump(mode="json")),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


def key_routes(service: Provisioning, identify: Identify) -> list[Route]:
    async def change_by(request: Request) -> tuple[Identity, Change]:
        identity = await identify(request, KEYS_MANAGE)
        return identity, Change(Actor("key", identity.key_id), request_id_of(request), now_ms())

    async def list_keys(request: Request) -> Response:
        identity = await identify(request, SETTINGS_READ)
        return _json(await service.list_keys(identity.account))

    async def create_key(request: Request) -> Response:
        identity, change = await change_by(request)
        spec = s.parse(s.KeyCreate, decode_body(await request.body()), "key")
        return _json(await service.create_key_from(change, identity.account, spec), 201)

    async def revoke_key(request: Request) -> Response:
        identity, change = await change_by(request)
        key_id = request.query_params.get("key_id")
        if not key_id:
            raise ApiError("invalid_request", "give the key to revoke as ?key_id=key_...", param="key_id")
        return _json(await service.revoke_key(change, identity.account, key_id))

    return [
        Route(KEYS_PATH, list_keys, methods=["GET"]),
        Route(KEYS_PATH, create_key, methods=["POST"]),
        Route(KEYS_PATH, revoke_key, methods=["DELETE"]),
    ]
