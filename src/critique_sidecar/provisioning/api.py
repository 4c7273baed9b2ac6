"""The provisioning API: an authenticated HTTP API for operators, on its own listener
(CRITIQUE_ADMIN_LISTEN), never routed by the public Envoy listener.

Every route but GET /openapi.json needs `Authorization: Bearer crtop_...` (an operator token,
created with `critique-sidecar operator-tokens create`) with the route's scope. Each request
gets a request id (the caller's `X-Request-Id` when well formed), returned in `x-request-id` and
written into the audit entry of any change it makes. Errors have the product's shape."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import audit
from ..core import operator_tokens as ot
from ..core.account_settings import SettingsPatch
from ..core.errors import ApiError, StoreUnavailable
from ..core.keys import bearer_token
from ..core.stores import OperatorTokenCheck
from ..json_http import decode_body, error_response, http_error, json_response, request_id_of
from . import schemas as s
from .service import Provisioning, page_limit

Handler = Callable[[Request, audit.Change], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """One route: what the OpenAPI document says and what the router runs."""

    op_id: str
    method: str
    path: str
    summary: str
    scope: str
    response: type[BaseModel] | None
    status: int = 200
    body: type[BaseModel] | None = None
    query: tuple[str, ...] = ()
    idempotent: bool = False  # needs an Idempotency-Key header


def reply(model: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return json_response(model, status, headers)


def build_operations() -> list[Operation]:
    acct = "/v1/accounts/{account}"
    return [
        Operation("listKeys", "GET", f"{acct}/keys", "List an account's keys (never their secrets)", ot.KEYS, s.KeyList),
        Operation("createKey", "POST", f"{acct}/keys", "Create a key; its secret is in this response only",
                  ot.KEYS, s.NewKey, 201, s.KeyCreate),
        Operation("updateKey", "PATCH", f"{acct}/keys/{{key_id}}",
                  "Change a key's controls (expiry, model allowlist, daily cap, rate limits); null removes one",
                  ot.KEYS, s.KeyView, 200, s.KeyControlsPatch),
        Operation("revokeKey", "DELETE", f"{acct}/keys/{{key_id}}", "Revoke a key (and any rotated-out secret)",
                  ot.KEYS, s.KeyView),
        Operation("rotateKey", "POST", f"{acct}/keys/{{key_id}}/rotate",
                  "New secret, same key id and settings; the old secret works for the grace period",
                  ot.KEYS, s.RotatedKey, 200, s.KeyRotate),
        Operation("getCredits", "GET", f"{acct}/credits", "Balance, held credits and open holds", ot.CREDITS, s.Balance),
        Operation("grantCredits", "POST", f"{acct}/credits/grant", "Add credits (once per Idempotency-Key)",
                  ot.CREDITS, s.CreditResult, 200, s.CreditChange, idempotent=True),
        Operation("listGrants", "GET", f"{acct}/credits/grants",
                  "The account's live credit grants in spend order, with what expires when", ot.CREDITS, s.GrantList),
        Operation("debitCredits", "POST", f"{acct}/credits/debit",
                  "Remove credits (once per Idempotency-Key; never below what open holds need)",
                  ot.CREDITS, s.CreditResult, 200, s.CreditChange, idempotent=True),
        Operation("getSettings", "GET", f"{acct}/settings", "The account's Inference API settings",
                  ot.SETTINGS, s.Settings),
        Operation("patchSettings", "PATCH", f"{acct}/settings",
                  "Change some settings (same validation as the customer's PATCH)", ot.SETTINGS, s.Settings),
        Operation("exportUsage", "GET", f"{acct}/usage", "Usage records after a cursor, oldest first",
                  ot.USAGE, s.UsagePage, query=("after", "limit")),
        Operation("listUsageAccounts", "GET", "/v1/usage/accounts", "Accounts that have usage records",
                  ot.USAGE, None),
        Operation("accountAudit", "GET", f"{acct}/audit", "The account's audit trail, newest first",
                  ot.AUDIT, s.AuditPage, query=("before", "limit")),
        Operation("operatorAudit", "GET", "/v1/audit/operators",
                  "Operator token changes, newest first", ot.AUDIT, s.AuditPage, query=("before", "limit")),
    ]  # fmt: skip


OPERATIONS = build_operations()


def build_admin_app(service: Provisioning, tokens: OperatorTokenCheck) -> Starlette:
    from .openapi import openapi_document

    async def authenticate(request: Request, scope: str) -> audit.Actor:
        token = bearer_token(request.headers.get("authorization"))
        record = await tokens.authenticate(token) if token and token.isascii() else None
        if record is None:
            raise ApiError(
                "invalid_operator_token",
                "Send 'Authorization: Bearer crtop_...' with an active operator token.",
            )
        if scope not in record.scopes:
            raise ApiError("insufficient_scope", f"This operator token lacks the '{scope}' scope for this route")
        return audit.Actor("operator", record.token_id, record.name)

    def account(request: Request) -> str:
        return str(request.path_params["account"])

    async def body(request: Request, model: type[s._Strict], what: str) -> Any:
        return s.parse(model, decode_body(await request.body()), what)

    handlers: dict[str, Handler] = {}

    def handler(fn: Handler) -> Handler:
        handlers[fn.__name__] = fn
        return fn

    @handler
    async def listKeys(request: Request, change: audit.Change) -> Response:
        return reply(await service.list_keys(account(request)))

    @handler
    async def createKey(request: Request, change: audit.Change) -> Response:
        spec = await body(request, s.KeyCreate, "key")
        return reply(await service.create_key_from(change, account(request), spec), 201)

    @handler
    async def updateKey(request: Request, change: audit.Change) -> Response:
        spec = await body(request, s.KeyControlsPatch, "key controls")
        return reply(await service.patch_key(change, account(request), request.path_params["key_id"], spec))

    @handler
    async def revokeKey(request: Request, change: audit.Change) -> Response:
        return reply(await service.revoke_key(change, account(request), request.path_params["key_id"]))

    @handler
    async def rotateKey(request: Request, change: audit.Change) -> Response:
        spec = await body(request, s.KeyRotate, "rotation")
        return reply(await service.rotate_key(change, account(request), request.path_params["key_id"], spec))

    @handler
    async def getCredits(request: Request, change: audit.Change) -> Response:
        return reply(await service.balance(account(request)))

    async def credit_change(request: Request, change: audit.Change, action: str) -> Response:
        idem = request.headers.get("idempotency-key")
        spec = await body(request, s.CreditChange, "credit change")
        result, replayed = await service.change_credits(change, account(request), action, spec, idem)
        return reply(result, headers={"idempotent-replayed": "true"} if replayed else None)

    @handler
    async def grantCredits(request: Request, change: audit.Change) -> Response:
        return await credit_change(request, change, "credits.grant")

    @handler
    async def listGrants(request: Request, change: audit.Change) -> Response:
        return reply(await service.grants(account(request)))

    @handler
    async def debitCredits(request: Request, change: audit.Change) -> Response:
        return await credit_change(request, change, "credits.debit")

    @handler
    async def getSettings(request: Request, change: audit.Change) -> Response:
        return reply(await service.get_settings(account(request)))

    @handler
    async def patchSettings(request: Request, change: audit.Change) -> Response:
        patch = SettingsPatch.parse(decode_body(await request.body()), service.webhook_networks)
        return reply(await service.patch_settings(change, account(request), patch))

    @handler
    async def exportUsage(request: Request, change: audit.Change) -> Response:
        q = request.query_params
        return reply(await service.usage(account(request), q.get("after"), page_limit(q.get("limit"))))

    @handler
    async def listUsageAccounts(request: Request, change: audit.Change) -> Response:
        return reply({"data": await service.usage_records.accounts()})

    @handler
    async def accountAudit(request: Request, change: audit.Change) -> Response:
        q = request.query_params
        return reply(await service.audit_page(account(request), q.get("before"), page_limit(q.get("limit"))))

    @handler
    async def operatorAudit(request: Request, change: audit.Change) -> Response:
        q = request.query_params
        return reply(await service.audit_page(None, q.get("before"), page_limit(q.get("limit"))))

    def endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
        run = handlers[op.op_id]

        async def route(request: Request) -> Response:
            request_id = request_id_of(request)
            try:
                actor = await authenticate(request, op.scope)
                response = await run(request, audit.Change(actor, request_id, int(time.time() * 1000)))
            except ApiError as exc:
                response = error_response(exc)
            except (OSError, TimeoutError) as exc:
                response = error_response(StoreUnavailable(type(exc).__name__))
            response.headers["x-request-id"] = request_id
            return response

        return route

    document = orjson.dumps(openapi_document(OPERATIONS))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        return error_response(http_error(exc))

    routes = [Route("/openapi.json", openapi, methods=["GET"])]
    routes += [Route(op.path, endpoint(op), methods=[op.method]) for op in OPERATIONS]
    return Starlette(routes=routes, exception_handlers={HTTPException: on_http_error})
