"""ext_proc servicer: one gRPC stream per HTTP request on the metered chat route.

Phases: request headers (who, which scope; strip the key and client x-critique-* headers),
request body (parse, route, hold), response headers (status, SSE switch), response body
(usage -> settle -> X-Critique-* headers). Everything between is the core's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

from ..core.auth import Authenticator, Identity, authorize
from ..core.chat_request import upstream_body
from ..core.errors import ApiError
from ..core.metering import Meter, MeteredRequest
from ..core.money import format_credits, format_usd
from ..core.scopes import CHAT
from ..core.sse import SseMeter, charge_comment
from ..core.usage import decode_body, parse_json_response
from . import messages as m
from .identity import identity_from_metadata

log = logging.getLogger(__name__)

OPT_IN_HEADER = "x-critique-deepseek-training-opt-in"
MODEL_HEADER = "x-critique-model"  # Envoy routes on it to the model's cluster
# Upstreams are asked not to compress (we meter what they send); any encoding that comes
# anyway is decoded for metering only.
_NEVER_UPSTREAM = ("authorization", "accept-encoding")
_STREAM_BODY = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=m.mutation(remove=["content-length"]))),
    mode_override=processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED),
)


class ChatExchange:
    """State of one HTTP exchange as seen through ext_proc."""

    __slots__ = ("_auth", "_meter", "identity", "opt_in", "metered", "response_status", "encoding", "sse")

    def __init__(self, auth: Authenticator, meter: Meter) -> None:
        self._auth = auth
        self._meter = meter
        self.identity: Identity | None = None
        self.opt_in = False
        self.metered: MeteredRequest | None = None
        self.response_status = 0
        self.encoding = ""
        self.sse: SseMeter | None = None  # set when the response is an SSE stream

    async def handle(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        kind = req.WhichOneof("request")
        try:
            if kind == "request_headers":
                return await self._request_headers(req)
            if kind == "request_body":
                return await self._request_body(req)
            if kind == "response_headers":
                return await self._response_headers(req)
            if kind == "response_body":
                return await self._response_body(req)
        except ApiError as error:
            return m.immediate(error)
        return m.CONTINUE_REQUEST_TRAILERS if kind == "request_trailers" else m.CONTINUE_RESPONSE_TRAILERS

    async def _request_headers(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        headers = m.headers_of(req.request_headers.headers)
        identity = identity_from_metadata(req.metadata_context)
        if identity is None:  # authorising here (one stream) rather than in ext_authz
            identity = await self._auth.identify(headers.get("authorization"))
            authorize(identity, CHAT)
        if req.request_headers.end_of_stream:
            raise ApiError("invalid_request", "a JSON request body is required")
        self.identity = identity
        self.opt_in = headers.get(OPT_IN_HEADER, "").strip().lower() == "true"
        strip = [*_NEVER_UPSTREAM, *(k for k in headers if k.startswith("x-critique-"))]
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=m.mutation(remove=strip)))
        )

    async def _request_body(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        if self.identity is None:
            return m.CONTINUE_REQUEST_BODY
        chat = self._meter.parse(req.request_body.body)
        self.metered = await self._meter.admit(self.identity, chat, self.opt_in)
        set_headers = {MODEL_HEADER: chat.model.id}
        new_body = upstream_body(chat)
        if new_body is not None:  # Envoy refuses a mutated body whose content-length is stale
            set_headers["content-length"] = str(len(new_body))
        common = pb.CommonResponse(header_mutation=m.mutation(set_headers), clear_route_cache=True)
        if new_body is not None:
            common.body_mutation.body = new_body
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    async def _response_headers(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        metered = self.metered
        if metered is None:  # denied or never admitted: never charge or decorate
            return m.CONTINUE_RESPONSE_HEADERS
        headers = m.headers_of(req.response_headers.headers)
        self.response_status = int(headers.get(":status", "0") or 0)
        add = {"x-critique-request-id": metered.request_id}
        if metered.warnings:
            add["x-critique-warning"] = ",".join(metered.warnings)
        spoofed = [k for k in headers if k.startswith("x-critique-")]
        self.encoding = headers.get("content-encoding", "")
        if not 200 <= self.response_status < 300:
            await self._meter.settle(metered, None, "upstream_error")  # release, charge nothing
        elif headers.get("content-type", "").startswith("text/event-stream"):
            # Stream this response's body chunk by chunk (and only this one).
            self.sse = SseMeter(hide_usage=not metered.chat.client_wants_usage)
            reply = pb.ProcessingResponse()
            reply.CopyFrom(_STREAM_BODY)
            reply.response_headers.response.header_mutation.MergeFrom(m.mutation(add, remove=spoofed))
            return reply
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=m.mutation(add, remove=spoofed))
            )
        )

    async def _response_body(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        metered = self.metered
        if self.sse is not None and metered is not None:
            return await self._stream_chunk(metered, self.sse, req.response_body)
        if metered is None or metered.settled is not None:
            return m.CONTINUE_RESPONSE_BODY
        usage, text_bytes = parse_json_response(decode_body(req.response_body.body, self.encoding))
        charge = self._meter.charge(metered, usage, text_bytes)
        result = await self._meter.settle(metered, charge, "estimated" if charge.estimated else "ok")
        charged = {
            "x-critique-credits-charged": format_credits(result.credits),
            "x-critique-estimated-usd": format_usd(charge.usd),
        }
        return pb.ProcessingResponse(
            response_body=pb.BodyResponse(response=pb.CommonResponse(header_mutation=m.mutation(charged)))
        )

    async def _stream_chunk(self, metered: MeteredRequest, sse: SseMeter, body: pb.HttpBody) -> pb.ProcessingResponse:
        out = sse.feed(body.body)
        if sse.done or body.end_of_stream:
            if metered.settled is None:
                charge = self._meter.charge(metered, sse.usage, sse.delivered_bytes)
                result = await self._meter.settle(metered, charge, "estimated" if charge.estimated else "ok")
                out += charge_comment(
                    metered.request_id, format_credits(result.credits), format_usd(charge.usd), charge.estimated
                )
            out += sse.finish()
        if out == body.body:
            return m.CONTINUE_RESPONSE_BODY
        return pb.ProcessingResponse(
            response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=pb.BodyMutation(body=out)))
        )

    async def close(self) -> None:
        """The stream ended. A request still holding credits was cut off: release it if no
        response started, else charge what we can tell was served."""
        metered = self.metered
        if metered is None or metered.settled is not None:
            return
        if self.response_status == 0:
            await self._meter.settle(metered, None, "cancelled")
        elif self.sse is not None:  # cut mid-stream: usage if it came, else what was delivered
            charge = self._meter.charge(metered, self.sse.usage, self.sse.delivered_bytes)
            await self._meter.settle(metered, charge, "interrupted")
        else:
            await self._meter.settle(metered, self._meter.charge(metered, None), "interrupted")


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, auth: Authenticator, meter: Meter) -> None:
        self._auth = auth
        self._meter = meter

    async def Process(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        exchange = ChatExchange(self._auth, self._meter)
        try:
            async for req in request_iterator:
                yield await exchange.handle(req)
        finally:
            try:
                await exchange.close()
            except Exception:  # noqa: BLE001 - must not mask the stream's own outcome
                log.exception("settling a cut-off request failed")
