"""GET / PATCH /api/settings/inference-api: the caller's account settings.

GET needs read:inference (or admin:inference); PATCH needs admin:inference, which agent keys
do not have, so an inference key can never raise its own caps. The body is parsed with
exact decimals (a JSON number like 0.1 is never a float) and validated by the core's
SettingsPatch; the response is always the full settings after the change. A change is written
to the account's audit trail (actor: the calling key) by the same script that applies it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.account_settings import SettingsPatch, SettingsStore
from ..core.audit import Actor, Change
from ..core.auth import Identity
from ..core.scopes import SETTINGS_PATH, SETTINGS_READ, SETTINGS_WRITE
from ..core.webhook_address import Network
from ..json_http import decode_body, json_response, request_id_of

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


def settings_routes(
    store: SettingsStore, identify: Identify, webhook_networks: tuple[Network, ...] = ()
) -> list[Route]:
    async def get_settings(request: Request) -> Response:
        identity = await identify(request, SETTINGS_READ)
        return json_response((await store.get(identity.account)).to_json())

    async def patch_settings(request: Request) -> Response:
        identity = await identify(request, SETTINGS_WRITE)
        patch = SettingsPatch.parse(
            decode_body(await request.body(), "settings PATCH", empty_ok=False), webhook_networks
        )
        change = Change(Actor("key", identity.key_id), request_id_of(request), int(time.time() * 1000))
        updated = (await store.patch(identity.account, patch, change)).to_json()
        if updated.get("notify_webhook_url"):  # the signing secret, shown once when created
            secret = await store.ensure_webhook_secret(identity.account)
            if secret is not None:
                updated["notify_webhook_secret"] = secret
        return json_response(updated)

    return [
        Route(SETTINGS_PATH, get_settings, methods=["GET"]),
        Route(SETTINGS_PATH, patch_settings, methods=["PATCH"]),
    ]
