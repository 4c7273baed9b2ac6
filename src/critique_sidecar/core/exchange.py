"""One metered chat-completions exchange, transport-free. Both front doors drive it:

    start(headers)            who is calling (or the identity ext_authz already found)
    admit(body)               parse, hold; returns the upstream body and headers
    response_start(status, headers)
                              release on upstream errors; decide JSON vs SSE metering
    response_json(body)       settle from usage; returns the X-Critique-* headers
    stream_chunk(chunk, end)  meter SSE as it passes; returns the bytes to forward
                              (= stream_feed, then stream_end once stream_ending)
    close()                   the exchange ended: settle whatever is still open

The front doors translate their protocol to these calls and nothing else."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .auth import Authenticator, Identity, authorize
from .capture import completion_text
from .chat_request import upstream_body
from .errors import ApiError
from .limits import REQUEST_ID
from .metering import Meter, MeteredRequest
from .money import format_credits, format_usd
from .observe import Denial, RequestTrace
from .scopes import CHAT
from .sse import SseMeter, charge_comment
from .tokens import decode_body, parse_json_response
from .wire import (
    CREDITS_CHARGED_HEADER,
    ESTIMATED_USD_HEADER,
    MODEL_HEADER,
    NEVER_UPSTREAM,
    OPT_IN_HEADER,
    REQUEST_ID_HEADER,
    WARNING_HEADER,
    ours,
)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    body: bytes | None  # None: forward the client's body unchanged
    set_headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ResponseStart:
    set_headers: dict[str, str]
    remove_headers: list[str]
    stream: bool  # meter this response chunk by chunk (SSE)


@dataclass(slots=True)
class ChatExchange:
    auth: Authenticator
    meter: Meter
    identity: Identity | None = None
    opt_in: bool = False
    metered: MeteredRequest | None = None
    response_status: int = 0
    encoding: str = ""
    sse: SseMeter | None = field(default=None)
    began: float = field(default_factory=time.monotonic)  # for the denial latency reported to the observer
    trace_id: str | None = None  # the front door's x-request-id, for request logs
    sse_closed: bool = False
    # -- observe (issue 20): the request's trace (None unless tracing is on), stream timing
    trace: RequestTrace | None = None
    last_chunk: float = 0.0  # monotonic time of the previous metered SSE chunk (0: none yet)

    async def start(self, headers: Mapping[str, str], identity: Identity | None = None) -> list[str]:
        """Authorise; returns the request headers the upstream must not see."""
        self.trace_id = headers.get("x-request-id")
        tracer = self.meter.tracer
        if tracer is not None:
            self.trace = tracer.begin(headers)
        if identity is None:
            found: Identity | None = None
            try:
                found = await self.auth.identify(headers.get("authorization"))
                authorize(found, CHAT)
            except ApiError as error:
                self._denied(error, found)
                raise
            identity = found
        self.identity = identity
        self.opt_in = headers.get(OPT_IN_HEADER, "").strip().lower() == "true"
        return [*NEVER_UPSTREAM, *ours(headers)]

    async def admit(self, body: bytes) -> UpstreamRequest:
        if self.identity is None:
            raise ApiError("invalid_api_key", "Invalid API key.")
        model: str | None = None
        try:
            chat = self.meter.parse(body)
            model = chat.model.id
            self.metered = await self.meter.admit(self.identity, chat, self.opt_in)
        except ApiError as error:
            self._denied(error, self.identity, model)
            raise
        if self.trace is not None:
            m = self.metered
            self.trace.admitted(
                m.request_id, m.identity.account, m.identity.key_id, model, chat.max_output_tokens, m.hold
            )
            m.trace = self.trace
        headers = {MODEL_HEADER: chat.model.id}
        new_body = upstream_body(chat)
        if new_body is not None:
            headers["content-length"] = str(len(new_body))
        return UpstreamRequest(new_body, headers)

    async def response_start(self, status: int, headers: Mapping[str, str]) -> ResponseStart | None:
        """None when the request was never admitted (denied): never charge or decorate those."""
        metered = self.metered
        if metered is None:
            return None
        self.response_status = status
        self.encoding = headers.get("content-encoding", "")
        add = {REQUEST_ID_HEADER: metered.request_id}
        # >>> limits: the id the SDKs read, and the per-minute limits (on a stream's head too)
        add[REQUEST_ID] = metered.request_id
        if metered.rate is not None:
            add.update(metered.rate.headers())
        # <<< limits
        if metered.warnings:
            add[WARNING_HEADER] = ",".join(metered.warnings)
        remove = ours(headers)  # upstreams can't spoof charges
        stream = False
        if not 200 <= status < 300:
            await self.meter.settle(metered, None, "upstream_error")  # release, charge nothing
        elif headers.get("content-type", "").startswith("text/event-stream"):
            # Opted-in streams keep their text (bounded) for the training capture; no others do.
            self.sse = SseMeter(hide_usage=not metered.chat.client_wants_usage, keep_text=metered.opt_in)
            remove.append("content-length")  # we may change the stream's length
            stream = True
            self.meter.observer.stream_opened()
        if self.trace is not None:
            self.trace.response(status, stream)
        return ResponseStart(add, remove, stream)

    async def response_json(self, body: bytes) -> dict[str, str]:
        """Settle a non-streaming response; the charge headers to add."""
        metered = self.metered
        if metered is None or metered.settled is not None:
            return {}
        decoded = decode_body(body, self.encoding)
        usage, text_bytes = parse_json_response(decoded)
        result, charge = await self.meter.settle_completed(metered, usage, text_bytes, lambda: completion_text(decoded))
        return {
            CREDITS_CHARGED_HEADER: format_credits(result.credits),
            ESTIMATED_USD_HEADER: format_usd(charge.usd),
        }

    async def stream_chunk(self, chunk: bytes, end: bool) -> bytes:
        """Bytes to forward for one piece of an SSE stream (`chunk` itself when unchanged)."""
        out = self.stream_feed(chunk)
        if self.stream_ending(end):
            out = await self.stream_end(out)
        return chunk if out == chunk else out

    def stream_feed(self, chunk: bytes) -> bytes:
        """stream_chunk's part that needs no store call, for front doors that answer most
        chunks without a coroutine: meter `chunk` as it passes; the bytes to forward now
        (`chunk` itself when unchanged). Then, if stream_ending(), await stream_end()."""
        metered, sse = self.metered, self.sse
        if metered is None or sse is None:
            return chunk
        if chunk:
            now = time.monotonic()
            first = self.last_chunk == 0.0
            since = metered.started_mono if first else self.last_chunk
            self.last_chunk = now
            self.meter.observer.stream_chunk(metered.chat.model.id, first, now - since)
        return sse.feed(chunk)

    def stream_ending(self, end: bool) -> bool:
        """Whether the stream is over ([DONE] seen, or the response's last piece)."""
        sse = self.sse
        return self.metered is not None and sse is not None and (sse.done or end)

    async def stream_end(self, out: bytes) -> bytes:
        """Settle the stream (once) and put the charge line and what was held back after `out`."""
        metered, sse = self.metered, self.sse
        if metered is None or sse is None:
            return out
        if metered.settled is None:
            result, charge = await self.meter.settle_completed(metered, sse.usage, sse.delivered_bytes, sse.text)
            out += charge_comment(
                metered.request_id, format_credits(result.credits), format_usd(charge.usd), charge.estimated
            )
        return out + sse.finish()

    def needs_close(self) -> bool:
        """Whether close() has anything to do: an open stream to count as closed, or a hold
        still open. False in the common case (settled in the response phases, or denied)."""
        if self.sse is not None and not self.sse_closed:
            return True
        metered = self.metered
        return metered is not None and metered.settled is None

    async def close(self) -> None:
        """The exchange ended. A request still holding credits was cut off: release it if no
        response started, else charge what we can tell was served."""
        if self.sse is not None and not self.sse_closed:
            self.sse_closed = True
            self.meter.observer.stream_closed()
        metered = self.metered
        if metered is None or metered.settled is not None:
            return
        if self.response_status == 0:
            await self.meter.settle(metered, None, "cancelled")
        elif self.sse is not None:  # cut mid-stream: usage if it came, else what was delivered
            charge = self.meter.charge(metered, self.sse.usage, self.sse.delivered_bytes)
            await self.meter.settle(metered, charge, "interrupted")
        else:
            await self.meter.settle(metered, self.meter.charge(metered, None), "interrupted")

    def _denied(self, error: ApiError, identity: Identity | None, model: str | None = None) -> None:
        account, key_id = (identity.account, identity.key_id) if identity else (None, None)
        latency = time.monotonic() - self.began
        self.meter.observer.denied(Denial(error.code, account, key_id, model, self.trace_id, latency))
        if self.trace is not None:
            self.trace.denied(error.code, account, key_id, model)
