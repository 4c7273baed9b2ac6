"""One metered exchange at one endpoint (core/endpoints/), transport-free. Both front doors
drive it:

    start(headers)            who is calling (or the identity ext_authz already found)
    admit(body)               parse, hold; returns the upstream body and headers
    response_start(status, headers)
                              release on upstream errors; decide JSON vs SSE metering
    response_json(body)       settle from usage; returns the X-Critique-* headers (and the body,
                              when the model id is swapped back)
    stream(chunk, end)        meter SSE as it passes: the bytes to forward, or (the stream is
                              over) an awaitable settling it once with the charge line first
    close()                   the exchange ended: settle whatever is still open (core/closing.py)

Every refusal is an ApiError in the endpoint's error shape carrying the request's id; the front
doors translate their protocol to these calls and nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import orjson

from . import end_user
from .auth import Authenticator, Identity, authorize
from .endpoints.base import Endpoint, StreamTally, client_key, read_json
from .errors import ApiError
from .metering import Meter, MeteredRequest, new_request_id
from .money import format_credits, format_usd
from .observe import Denial, RequestTrace
from .settlement import Delivered
from .sse import SseMeter, charge_comment
from .tokens import decode_body
from .upstream import UpstreamHeader
from .wire import (
    CREDITS_CHARGED_HEADER,
    END_USER_HEADER,
    ESTIMATED_USD_HEADER,
    MAX_REQUEST_BODY_BYTES,
    MODEL_HEADER,
    NEVER_UPSTREAM,
    OPT_IN_HEADER,
    REQUEST_ID_HEADER,
    SDK_REQUEST_ID_HEADER,
    SHOULD_RETRY_HEADER,
    WARNING_HEADER,
    ours,
)

# A model server's refusal of the gateway's own credential: never the client's key (it never
# reaches the model server), so the client is not told its key is wrong.
_UPSTREAM_AUTH = (401, 403, 407)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    body: bytes | None  # None: forward the client's body unchanged
    set_headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ResponseStart:
    set_headers: dict[str, str]
    remove_headers: list[str]
    stream: bool  # meter this response chunk by chunk (SSE)


def _model_swap(upstream_id: str, public_id: str) -> tuple[bytes, bytes] | None:
    """Bytes that swap the model server's id for the catalog's in a JSON body or event: the
    `"model":` member as servers write it (JSON strings cannot hold a raw quote, so the pair
    never matches inside generated text)."""
    if upstream_id == public_id:
        return None
    return b'"model":' + orjson.dumps(upstream_id), b'"model":' + orjson.dumps(public_id)


def _swapped(data: bytes, swap: tuple[bytes, bytes] | None) -> bytes:
    if swap is None:
        return data
    spaced = (swap[0].replace(b":", b": ", 1), swap[1].replace(b":", b": ", 1))
    return data.replace(*swap).replace(*spaced)


@dataclass(slots=True)
class Exchange:
    endpoint: Endpoint
    auth: Authenticator
    meter: Meter
    credentials: Mapping[str, UpstreamHeader] = field(default_factory=dict)
    identity: Identity | None = None
    opt_in: bool = False
    end_user_header: str | None = None  # X-Critique-End-User as sent, checked at admission
    metered: MeteredRequest | None = None
    response_status: int = 0
    encoding: str = ""
    sse: SseMeter | None = field(default=None)
    began: float = field(default_factory=time.monotonic)  # for the denial latency reported to the observer
    request_id: str = field(default_factory=new_request_id)  # on every response and refusal
    front_door_id: str | None = None  # the front door's x-request-id (Envoy's), for request logs
    sse_closed: bool = False
    trace: RequestTrace | None = None
    last_chunk: float = 0.0  # monotonic time of the previous metered SSE chunk (0: none yet)
    swap: tuple[bytes, bytes] | None = None  # the model server's model id -> the catalog's
    closing: asyncio.Task[None] | None = None  # core/closing.py's task, once started

    async def start(self, headers: Mapping[str, str], identity: Identity | None = None) -> list[str]:
        """Authorise; returns the request headers the upstream must not see."""
        self.front_door_id = headers.get(SDK_REQUEST_ID_HEADER)
        tracer = self.meter.tracer
        if tracer is not None:
            self.trace = tracer.begin(headers, self.endpoint.operation)
        if identity is None:
            found: Identity | None = None
            try:
                found = await self.auth.identify(client_key(headers, self.endpoint.key_headers))
                authorize(found, self.endpoint.scopes)
            except ApiError as error:
                raise self._denied(error, found) from None
            identity = found
        self.identity = identity
        self.opt_in = headers.get(OPT_IN_HEADER, "").strip().lower() == "true"
        self.end_user_header = headers.get(END_USER_HEADER)
        return [*NEVER_UPSTREAM, *self.endpoint.key_headers, *ours(headers)]

    async def admit(self, raw: bytes) -> UpstreamRequest:
        if self.identity is None:
            raise self.refused(ApiError("invalid_api_key", "Invalid API key."))
        model: str | None = None
        try:
            if len(raw) > MAX_REQUEST_BODY_BYTES:  # Envoy may buffer more (its limit is the stream's)
                raise ApiError("request_too_large", f"Request body exceeds {MAX_REQUEST_BODY_BYTES} bytes")
            body = self.meter.parse(self.endpoint, raw)
            model = body.model.id
            if self.end_user_header is not None:  # the header wins over the body
                body.end_user = end_user.from_header(self.end_user_header, END_USER_HEADER)
            self.metered = await self.meter.admit(self.identity, body, self.opt_in, self.endpoint.name, self.request_id)
        except ApiError as error:
            raise self._denied(error, self.identity, model) from None
        m = self.metered
        if self.trace is not None:
            self.trace.admitted(m.request_id, m.identity.account, m.identity.key_id, model, body.output_bound, m.hold)
            m.trace = self.trace
        headers = {MODEL_HEADER: body.model.id}
        credential = self.credentials.get(body.model.upstream)
        if credential is not None:
            headers[credential.name] = credential.value
        if body.model.upstream_id != body.model.id:
            body.body["model"] = body.model.upstream_id
            body.changed = True
            self.swap = _model_swap(body.model.upstream_id, body.model.id)
        new_body = orjson.dumps(body.body) if body.changed else None
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
        add = {REQUEST_ID_HEADER: metered.request_id, SDK_REQUEST_ID_HEADER: metered.request_id}
        if metered.rate is not None:
            add.update(metered.rate.headers())
        if metered.warnings:
            add[WARNING_HEADER] = ",".join(metered.warnings)
        remove = ours(headers)  # upstreams can't spoof charges
        stream = False
        if not 200 <= status < 300:
            await self.meter.settle(metered, None, "upstream_error")  # release, charge nothing
            if status in _UPSTREAM_AUTH:
                raise self.refused(
                    ApiError(
                        "upstream_auth_failed",
                        "The model server refused this gateway's credentials. This is a configuration problem on "
                        "the gateway's side, not your API key; nothing was charged.",
                        headers={SHOULD_RETRY_HEADER: "false"},
                    )
                )
        elif headers.get("content-type", "").startswith("text/event-stream") and self.endpoint.stream_reader:
            tally = StreamTally(text=[] if metered.opt_in else None)  # opted in: kept (bounded) for the capture
            self.sse = SseMeter(self.endpoint.stream_reader(metered.body), tally, self.swap)
            remove.append("content-length")  # we may change the stream's length
            stream = True
            self.meter.observer.stream_opened()
        if self.trace is not None:
            self.trace.response(status, stream)
        return ResponseStart(add, remove, stream)

    async def response_json(self, body: bytes) -> tuple[dict[str, str], bytes | None]:
        """Settle a non-streaming response: the charge headers to add, and the body to send in
        place of the model server's (None: unchanged)."""
        metered = self.metered
        if metered is None or metered.settled is not None:
            return {}, None
        decoded = decode_body(body, self.encoding)
        endpoint = self.endpoint
        obj, usage, output_bytes = read_json(endpoint, decoded)
        result, charge = await self.meter.settle_completed(
            metered, usage, Delivered(output_bytes), lambda: endpoint.json_text(obj)
        )
        headers = {CREDITS_CHARGED_HEADER: format_credits(result.credits), ESTIMATED_USD_HEADER: format_usd(charge.usd)}
        if self.swap is None or decoded is not body:  # a compressed body goes back as it came
            return headers, None
        swapped = _swapped(body, self.swap)
        if swapped != body:
            headers["content-length"] = str(len(swapped))
            return headers, swapped
        return headers, None

    def stream(self, chunk: bytes, end: bool) -> bytes | Awaitable[bytes]:
        """Meter one piece of an SSE stream (`end`: the response's last piece) as it passes. The
        bytes to forward now (`chunk` itself when unchanged), or, once the stream is over (its
        last event seen, or `end`), an awaitable that settles it and returns them with the
        charge line before the last event: most pieces cost no coroutine."""
        metered, sse = self.metered, self.sse
        if metered is None or sse is None:
            return chunk
        if chunk:
            now = time.monotonic()
            first = self.last_chunk == 0.0
            since = metered.started_mono if first else self.last_chunk
            self.last_chunk = now
            self.meter.observer.stream_chunk(metered.model, first, now - since, self.endpoint.operation)
        out = sse.feed(chunk)
        if sse.done or end:
            return self._stream_end(out)
        return out

    async def _stream_end(self, out: bytes) -> bytes:
        """Settle the stream (once) and put the charge line and what was held back after `out`."""
        metered, sse = self.metered, self.sse
        if metered is None or sse is None:
            return out
        if metered.settled is None:
            tally = sse.tally
            text = None if tally.text is None else "".join(tally.text)
            result, charge = await self.meter.settle_completed(
                metered, tally.usage, _delivered(tally), lambda: text, final=tally.final
            )
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
        elif self.sse is not None:  # cut mid-stream: reported usage, never below what was delivered
            tally = self.sse.tally
            charge = self.meter.charge(metered, tally.usage, _delivered(tally), final=tally.final)
            await self.meter.settle(metered, charge, "interrupted")
        else:
            # A JSON response that started but whose body never came through (too large to
            # meter, or the client left): the model server generated it, so the output bound.
            generated = Delivered(text_events=metered.body.output_bound)
            await self.meter.settle(metered, self.meter.charge(metered, None, generated), "interrupted")

    def refused(self, error: ApiError) -> ApiError:
        """`error` as this endpoint answers it: its error shape, and the request's id."""
        error.shape = self.endpoint.error_shape
        error.headers.setdefault(SDK_REQUEST_ID_HEADER, self.request_id)
        return error

    def _denied(self, error: ApiError, identity: Identity | None, model: str | None = None) -> ApiError:
        account, key_id = (identity.account, identity.key_id) if identity else (None, None)
        latency = time.monotonic() - self.began
        self.meter.observer.denied(Denial(error.code, account, key_id, model, self.front_door_id, latency))
        if self.trace is not None:
            self.trace.denied(error.code, account, key_id, model)
        return self.refused(error)


def _delivered(tally: StreamTally) -> Delivered:
    return Delivered(tally.output_bytes, tally.text_events)
