"""ext_proc servicer: one gRPC stream per HTTP request on a metered endpoint's routes.

Translates each ext_proc phase to a call on the core's Exchange (for the endpoint the request's
path names, core/endpoints/) and its answer back to an ext_proc response; a denial becomes an
immediate response in one place (messages.immediate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ..core.auth import Authenticator
from ..core.closing import Closings
from ..core.endpoints import ENDPOINTS, Endpoint, by_path
from ..core.errors import ApiError
from ..core.exchange import Exchange
from ..core.metering import Meter
from ..core.upstream import UpstreamHeader
from ..core.wire import MODEL_HEADER
from . import messages as m
from .identity import identity_from_metadata

log = logging.getLogger(__name__)

_STREAMED = processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED)


# Replies are filled in place (messages.fill_mutation says why): the hot path builds four.


def endpoint_of(path: str) -> Endpoint | None:
    """The endpoint a request's :path names. Under a path prefix Envoy hands ext_proc the
    client's path (its route rewrites it later), so a path ending in an endpoint's path is that
    endpoint: only the product's own routes enable ext_proc."""
    found = by_path(path)
    if found is None:
        bare = path.split("?", 1)[0]
        found = next((e for e in ENDPOINTS if bare.endswith(e.path)), None)
    return found


async def on_request_headers(x: Exchange, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
    headers = m.headers_of(req.request_headers.headers)
    strip = await x.start(headers, identity_from_metadata(req.metadata_context))
    if req.request_headers.end_of_stream:
        raise x.refused(ApiError("invalid_request", "a JSON request body is required"))
    reply = pb.ProcessingResponse()
    m.fill_mutation(reply.request_headers.response.header_mutation, remove=strip)
    if MODEL_HEADER in headers:
        # Envoy chose the route by the client's own model header: choose again without it, so
        # a request whose body never comes (HTTP/2 headers and trailers, no DATA) cannot reach
        # a model cluster unmetered (it meets the chat_unrouted reply instead).
        reply.request_headers.response.clear_route_cache = True
    return reply


async def on_request_body(x: Exchange, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
    upstream = await x.admit(req.request_body.body)
    reply = pb.ProcessingResponse()
    common = reply.request_body.response
    m.fill_mutation(common.header_mutation, upstream.set_headers)
    common.clear_route_cache = True  # route by the model header just set
    if upstream.body is not None:
        common.body_mutation.body = upstream.body
    return reply


async def on_response_headers(x: Exchange, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
    headers = m.headers_of(req.response_headers.headers)
    start = await x.response_start(int(headers.get(":status", "0") or 0), headers)
    if start is None:
        return m.CONTINUE_RESPONSE_HEADERS
    reply = pb.ProcessingResponse()
    m.fill_mutation(reply.response_headers.response.header_mutation, start.set_headers, remove=start.remove_headers)
    if start.stream:  # stream this response's body chunk by chunk (and only this one)
        reply.mode_override.CopyFrom(_STREAMED)
    return reply


async def on_response_body(x: Exchange, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
    body = req.response_body
    # Read once: each read of a bytes field makes a new object, so `out is body.body` was never
    # true and every unchanged chunk went back to Envoy as a full body replacement.
    chunk = body.body
    if x.sse is not None:  # a stream's piece (most take ExtProcServicer's own path)
        out = x.stream(chunk, body.end_of_stream)
        return chunk_reply(chunk, out if isinstance(out, bytes) else await out)
    charged, body_out = await x.response_json(chunk)
    if not charged:
        return m.CONTINUE_RESPONSE_BODY
    reply = pb.ProcessingResponse()
    common = reply.response_body.response
    m.fill_mutation(common.header_mutation, charged)
    if body_out is not None:
        common.body_mutation.body = body_out
    return reply


def chunk_reply(chunk: bytes, out: bytes) -> pb.ProcessingResponse:
    if out == chunk:  # most chunks: the shared "unchanged" reply, nothing built or copied
        return m.CONTINUE_RESPONSE_BODY
    reply = pb.ProcessingResponse()
    reply.response_body.response.body_mutation.body = out
    return reply


_PHASES = {
    "request_headers": on_request_headers,
    "request_body": on_request_body,
    "response_headers": on_response_headers,
    "response_body": on_response_body,
}


def _path(req: pb.ProcessingRequest) -> str:
    for h in req.request_headers.headers.headers:
        if h.key == ":path":
            return str(h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
    return ""


_PASS = {"request_trailers": m.CONTINUE_REQUEST_TRAILERS, "response_trailers": m.CONTINUE_RESPONSE_TRAILERS}
_CONTINUE = {
    **_PASS,
    "request_body": m.CONTINUE_REQUEST_BODY,
    "response_headers": m.CONTINUE_RESPONSE_HEADERS,
    "response_body": m.CONTINUE_RESPONSE_BODY,
}


# _ENDS_ITSELF: the stream ends with our status as soon as the last phase is answered, rather
# than with a read waiting for Envoy to end it. Envoy resets every ext_proc stream when its
# HTTP exchange completes, and grpc.aio leaks a little native memory for a batch cut off by
# a reset (the pending read's): ~110 bytes a request, measured with bench/soak.py on the bare
# servicer; ending the stream ourselves cuts that by about three quarters (docs/operations.md).


_NOT_METERED = ApiError("not_found", "This path is not a metered endpoint")


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(
        self, auth: Authenticator, meter: Meter, credentials: Mapping[str, UpstreamHeader] | None = None
    ) -> None:
        self._auth = auth
        self._meter = meter
        self._credentials = credentials or {}
        self._closings = Closings()  # settlements of exchanges cut off

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        exchange: Exchange | None = None
        loop = asyncio.get_running_loop()

        def ended(_: object) -> None:
            # grpc.aio runs this from its own thread when the RPC ends, even while the handler is
            # suspended at a `yield` whose `finally` may never run (the client went away).
            if exchange is not None and exchange.closing is None and exchange.needs_close():
                loop.call_soon_threadsafe(self._closings.close, exchange)

        context.add_done_callback(ended)
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if exchange is None:  # the first message: the request's headers name the endpoint
                    if kind != "request_headers":
                        # Envoy replied itself before the request reached us (the buffer filter's
                        # 413): nothing was admitted, nothing to meter.
                        yield _CONTINUE.get(kind, m.CONTINUE_RESPONSE_TRAILERS)
                        continue
                    endpoint = endpoint_of(_path(req))
                    if endpoint is None:
                        yield m.immediate(_NOT_METERED)
                        return
                    exchange = Exchange(endpoint, self._auth, self._meter, self._credentials)
                if kind == "response_body" and exchange.sse is not None:
                    # Most of a stream: a piece that settles nothing is answered here, without
                    # the coroutines of a phase (per-chunk cost is the streamed path's CPU).
                    body = req.response_body
                    chunk = body.body  # read once (see on_response_body)
                    out = exchange.stream(chunk, body.end_of_stream)
                    yield chunk_reply(chunk, out if isinstance(out, bytes) else await out)
                    if body.end_of_stream:
                        return  # the exchange is over: see _ENDS_ITSELF
                    continue
                phase = _PHASES.get(kind)
                if phase is None:
                    yield _PASS.get(kind, m.CONTINUE_RESPONSE_TRAILERS)
                    continue
                try:
                    yield await phase(exchange, req)
                except ApiError as error:
                    yield m.immediate(error)
                    return  # Envoy sends nothing after an immediate response
                if kind == "response_body" and req.response_body.end_of_stream:
                    return  # the exchange is over: see _ENDS_ITSELF
        finally:
            closing = self._closings.close(exchange) if exchange is not None else None
            if closing is not None:
                await asyncio.shield(closing)

    async def drain(self) -> None:
        """Wait for settlements still running after their streams ended (shutdown)."""
        await self._closings.drain()
