"""GET / POST / DELETE /api/settings/inference-api/keys: the signed-in customer's own keys
(Settings -> Connections). Listing needs read:inference or admin:inference, creating and
revoking admin:inference; only ever on the key's own account (never from the request).

GET lists the keys (never a secret); POST creates one (same body as the provisioning API's
create: name, scopes, expiry, model allowlist, per-key limits) and returns its secret once;
DELETE `?key_id=key_...` revokes one (and the keys it created). A key creates only keys weaker
than itself (core/key_grants.py). Every change is in the account's audit trail, made by actor
type `key` (the calling key's id). The operator actions behind it are the provisioning API's
(core.stores.KeyAdmin)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.audit import Actor, Change
from ..core.auth import Identity
from ..core.errors import ApiError
from ..core.scopes import KEYS_MANAGE, KEYS_PATH, SETTINGS_READ
from ..core.stores import KeyAdmin
from ..json_http import decode_body, json_response, request_id_of

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


def key_routes(keys: KeyAdmin, identify: Identify) -> list[Route]:
    async def change_by(request: Request) -> tuple[Identity, Change]:
        identity = await identify(request, KEYS_MANAGE)
        return identity, Change(Actor("key", identity.key_id), request_id_of(request), int(time.time() * 1000))

    async def list_keys(request: Request) -> Response:
        identity = await identify(request, SETTINGS_READ)
        return json_response((await keys.list_keys(identity.account)).model_dump(mode="json"))

    async def create_key(request: Request) -> Response:
        identity, change = await change_by(request)
        created = await keys.create_key_from_body(change, identity.account, decode_body(await request.body()))
        return json_response(created.model_dump(mode="json"), 201)

    async def revoke_key(request: Request) -> Response:
        identity, change = await change_by(request)
        key_id = request.query_params.get("key_id")
        if not key_id:
            raise ApiError("invalid_request", "give the key to revoke as ?key_id=key_...", param="key_id")
        return json_response((await keys.revoke_key(change, identity.account, key_id)).model_dump(mode="json"))

    return [
        Route(KEYS_PATH, list_keys, methods=["GET"]),
        Route(KEYS_PATH, create_key, methods=["POST"]),
        Route(KEYS_PATH, revoke_key, methods=["DELETE"]),
    ]
