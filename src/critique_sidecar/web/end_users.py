"""GET / PUT / DELETE /api/settings/inference-api/end-users?end_user=<id>: one end user's own
limits (core/end_user_limits.py). Reading needs read:inference or admin:inference; changing
needs admin:inference, like the account's settings. Every answer shows the end user's own
values, the account's defaults and what admission applies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import end_user, end_user_limits
from ..core.account_settings import SettingsStore
from ..core.auth import Identity
from ..core.end_user_limits import EndUserLimitsStore
from ..core.errors import ApiError
from ..core.scopes import END_USERS_PATH, SETTINGS_READ, SETTINGS_WRITE
from ..json_http import decode_body, json_response

Identify = Callable[[Request, frozenset[str]], Awaitable[Identity]]


def _end_user(request: Request) -> str:
    value = request.query_params.get("end_user")
    if value is None:
        raise ApiError("invalid_request", "'end_user' is required: ?end_user=<id>", param="end_user")
    return end_user.checked(value, "end_user")


def end_user_routes(store: EndUserLimitsStore, settings: SettingsStore, identify: Identify) -> list[Route]:
    async def answer(account: str, user: str) -> Response:
        own = end_user_limits.to_json(await store.get(account, user))
        default = end_user_limits.defaults(await settings.get(account))
        return json_response(
            {
                "object": "end_user_limits",
                "end_user": user,
                "limits": own,
                "defaults": default,
                "effective": end_user_limits.effective(own, default),
            }
        )

    async def show(request: Request) -> Response:
        identity = await identify(request, SETTINGS_READ)
        return await answer(identity.account, _end_user(request))

    async def put(request: Request) -> Response:
        identity = await identify(request, SETTINGS_WRITE)
        user = _end_user(request)
        to_set, to_delete = end_user_limits.parse_changes(
            decode_body(await request.body(), "end user limits PUT", empty_ok=False)
        )
        await store.change(identity.account, user, to_set, to_delete)
        return await answer(identity.account, user)

    async def clear(request: Request) -> Response:
        identity = await identify(request, SETTINGS_WRITE)
        user = _end_user(request)
        await store.change(identity.account, user, {}, [row.field for row in end_user_limits.ROWS.values()])
        return await answer(identity.account, user)

    return [
        Route(END_USERS_PATH, show, methods=["GET"]),
        Route(END_USERS_PATH, put, methods=["PUT"]),
        Route(END_USERS_PATH, clear, methods=["DELETE"]),
    ]
