"""The metered endpoints as pure ASGI middleware, for Python gateways without Envoy.

    app = Middleware(gateway, components=components)      # or auth=..., meter=...

It wraps any ASGI app that serves the inference API (typically by forwarding it to a model
server). Non-HTTP scopes and other paths pass straight through. On a metered endpoint's path
(core/endpoints/) it translates ASGI to the core's Exchange, the same calls the Envoy ext_proc
translator makes:

    request headers   exchange.start      401/403 before any body is read
    request body      exchange.admit      413 past max_body_bytes; 400/404/402/429/503
                      the inner app sees the admitted body and headers: the key, accept-encoding
                      and client x-critique-* removed, x-critique-model set (route by it), the
                      model server's credential added (core/upstream.py)
    response start    exchange.response_start
    JSON body         held until complete (the charge headers go on the start message), then
                      exchange.response_json
    SSE body          exchange.stream per message, forwarded at once, never buffered
    however it ends   exchange.close: releases or charges what is still open

The inner app should stop when `receive` says http.disconnect (the reference gateway does), so
a client that hangs up is charged for what it got, as behind Envoy. The closing settlement runs
in a task of its own (asyncio), so a server cancelling the request task cannot leave the hold
open; `drain()` waits for those still running (call it at shutdown)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.auth import Authenticator
from ..core.closing import Closings
from ..core.endpoints import Endpoint, by_path
from ..core.errors import ApiError
from ..core.exchange import Exchange
from ..core.metering import Meter
from ..core.upstream import UpstreamHeader
from ..core.wire import MAX_RESPONSE_BODY_BYTES, WARNING_HEADER
from ._http import (
    MAX_BODY_BYTES,
    declared_too_large,
    header_dict,
    joined,
    mutate,
    read_body,
    send_error,
    too_large,
)

log = logging.getLogger(__name__)


class Core(Protocol):
    """What the middleware needs of app.Components."""

    auth: Authenticator
    meter: Meter
    credentials: dict[str, UpstreamHeader]


class Middleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        components: Core | None = None,
        auth: Authenticator | None = None,
        meter: Meter | None = None,
        credentials: Mapping[str, UpstreamHeader] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BODY_BYTES,
    ) -> None:
        if components is not None:
            if auth is not None or meter is not None:
                raise TypeError("pass components=, or auth= and meter=, not both")
            auth, meter, credentials = components.auth, components.meter, components.credentials
        if auth is None or meter is None:
            raise TypeError("Middleware needs components=, or both auth= and meter=")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.app = app
        self.auth = auth
        self.meter = meter
        self.credentials = credentials if credentials is not None else {}
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self._closings = Closings()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint: Endpoint | None = by_path(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(endpoint, self.auth, self.meter, self.credentials)
        try:
            await self._metered(exchange, scope, receive, send)
        finally:
            closing = self._closings.close(exchange)  # a task of its own: survives this one's cancellation
            if closing is not None:
                await asyncio.shield(closing)

    async def drain(self) -> None:
        """Wait for settlements of requests that ended (or were cancelled) but are still settling."""
        await self._closings.drain()

    async def _metered(self, exchange: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope["headers"])
        for name in exchange.endpoint.key_headers:
            value = joined(scope["headers"], name)
            if value is not None:
                headers[name] = value
        try:
            if declared_too_large(headers, self.max_body_bytes):  # refused before reading it
                raise exchange.refused(too_large(self.max_body_bytes))
            strip = await exchange.start(headers)
            body = await read_body(receive, self.max_body_bytes)
            if body is None:  # the client left while sending
                return
            if not body:  # as ext_proc's request headers with end_of_stream
                raise ApiError("invalid_request", "a JSON request body is required")
            upstream = await exchange.admit(body)
        except ApiError as error:
            await send_error(send, exchange.refused(error))
            return
        if upstream.body is not None:
            body = upstream.body
        inner = dict(scope)
        inner["headers"] = mutate(
            scope["headers"],
            {**upstream.set_headers, "content-length": str(len(body))},
            remove=[*strip, "transfer-encoding"],  # the inner app gets the body in one message
        )
        response = _MeteredResponse(exchange, send, self.max_response_bytes)
        await self.app(inner, _replay(body, receive), response.send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The admitted body first, then the client's own events (http.disconnect)."""
    pending = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


class _MeteredResponse:
    """The inner app's response on its way out: decorated, metered, and for JSON held until
    the body is complete so the charge headers can go on it."""

    def __init__(self, exchange: Exchange, send: Send, max_json_bytes: int) -> None:
        self._x = exchange
        self._send = send
        self._max_json = max_json_bytes
        self._mode = "pass"  # pass (not metered) | json | sse | replaced (an error went out instead)
        self._held: Message = {}
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif self._mode == "pass":
            await self._send(message)
        elif kind == "http.response.body":
            await self._body_part(message)
        elif self._mode != "replaced":
            await self._send(message)

    async def _start(self, message: Message) -> None:
        raw = list(message.get("headers", []))
        try:
            start = await self._x.response_start(message["status"], header_dict(raw))
        except ApiError as error:
            await self._replace(error)
            return
        if start is None:  # never admitted: never charge or decorate
            await self._send(message)
            return
        message = {**message, "headers": mutate(raw, start.set_headers, start.remove_headers)}
        if start.stream:
            self._mode = "sse"
            await self._send(message)
        else:
            self._mode, self._held = "json", message

    async def _body_part(self, message: Message) -> None:
        chunk, more = message.get("body", b""), message.get("more_body", False)
        if self._mode == "sse":
            out = self._x.stream(chunk, not more)
            if not isinstance(out, bytes):
                out = await out
            await self._send(message if out is chunk else {**message, "body": out})
        elif self._mode == "json":
            self._body += chunk
            if len(self._body) > self._max_json:
                await self._unmetered(more)
                return
            if more:
                return
            try:
                charged, replaced = await self._x.response_json(bytes(self._body))
            except ApiError as error:
                await self._replace(error)
                return
            await self._send({**self._held, "headers": mutate(self._held["headers"], charged)})
            body = bytes(self._body) if replaced is None else replaced
            await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _unmetered(self, more: bool) -> None:
        """A JSON response too large to hold: it goes on as it comes, without charge headers; the
        exchange charges it at close as generated (its hold's bound for output)."""
        self._mode = "pass"
        start = {**self._held, "headers": mutate(self._held["headers"], {WARNING_HEADER: "response_too_large"})}
        await self._send(start)
        await self._send({"type": "http.response.body", "body": bytes(self._body), "more_body": more})
        self._body.clear()

    async def _replace(self, error: ApiError) -> None:
        """Nothing of the inner response went out yet: send the error instead of it."""
        self._mode = "replaced"
        await send_error(self._send, error)
