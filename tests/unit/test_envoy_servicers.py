"""envoy/ext_proc.py and envoy/authz.py driven directly: a fake request stream and servicer
context stand in for grpc.aio, the core runs over the in-memory fakes (tests/fakes.py). The
end-to-end suites cover the same paths through the real Envoy; these pin the servicers' own
logic, above all that a stream ended any way (completed, client gone, handler cancelled) is
settled exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.rpc import code_pb2

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.scopes import MODELS_PATH
from critique_sidecar.core.wire import END_USER_HEADER, MODEL_HEADER, OPT_IN_HEADER
from critique_sidecar.envoy.authz import AuthorizationServicer
from critique_sidecar.envoy.ext_proc import ExtProcServicer
from critique_sidecar.envoy.identity import NAMESPACE

from ..fakes import MemoryKeys, MemoryLedger

MODEL = "deepseek/deepseek-v4-flash"
_END = object()


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicers use. `end()` runs the done callbacks
    as grpc.aio does when the RPC ends: from another thread."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def end(self) -> None:
        thread = threading.Thread(target=lambda: [cb(self) for cb in self.callbacks])
        thread.start()
        thread.join()


class Stream:
    """Envoy's side of one ext_proc stream: send() a request, get the reply; finish() ends it."""

    def __init__(self, servicer: ExtProcServicer) -> None:
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.context = FakeContext()
        self.replies = servicer.Process(self._requests(), self.context)

    async def _requests(self) -> AsyncIterator[pb.ProcessingRequest]:
        while (item := await self.inbox.get()) is not _END:
            yield item  # type: ignore[misc]

    async def send(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        await self.inbox.put(request)
        return await asyncio.wait_for(self.replies.__anext__(), 5)

    async def finish(self) -> None:
        await self.inbox.put(_END)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(self.replies.__anext__(), 5)
        self.context.end()


class Gate:
    """A ledger whose settlements wait at a gate, so a test can act while one is under way."""

    def __init__(self, inner: MemoryLedger) -> None:
        self.inner, self.open, self.waiting = inner, asyncio.Event(), asyncio.Event()

    async def place_hold(self, hold: Any) -> Any:
        return await self.inner.place_hold(hold)

    async def settle(self, record: Any) -> Any:
        self.waiting.set()
        await self.open.wait()
        return await self.inner.settle(record)


async def until(condition: Callable[[], object], turns: int = 1000) -> None:
    """Let the event loop run until `condition` holds (no wall-clock sleep)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def header_map(headers: dict[str, str]) -> core_pb.HeaderMap:
    return core_pb.HeaderMap(headers=[core_pb.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])


def request_headers(headers: dict[str, str], end_of_stream: bool = False) -> pb.ProcessingRequest:
    """A request's headers as Envoy sends them to ext_proc: with its :path (chat's, unless given)."""
    headers = {":path": CHAT.path, **headers}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=end_of_stream)
    )


def request_body(body: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


def response_headers(status: int, content_type: str) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map({":status": str(status), "content-type": content_type})))  # fmt: skip


def response_body(body: bytes, end: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=end))


def chat(stream: bool = False) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Name three queues."}], "stream": stream, "max_tokens": 50})  # fmt: skip


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


TOKEN = sse({"choices": [{"index": 0, "delta": {"content": "tok "}}]})
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
COMPLETION = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "SQS, Kafka, RabbitMQ"}}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})  # fmt: skip


class Core:
    def __init__(self) -> None:
        self.keys, self.ledger = MemoryKeys(), MemoryLedger()
        self.auth = Authenticator(self.keys, cache_ttl_s=0)
        self.key = self.keys.add("acct-1")

    def servicer(self, ledger: Any = None) -> ExtProcServicer:
        return ExtProcServicer(self.auth, Meter(load_catalog(), ledger or self.ledger, Decimal("0.01")))

    async def admitted(self, servicer: ExtProcServicer, stream: bool) -> Stream:
        """A stream past admission: key checked, hold placed, model header set."""
        s = Stream(servicer)
        await s.send(request_headers({"authorization": f"Bearer {self.key}"}))
        await s.send(request_body(chat(stream)))
        assert len(self.ledger.holds) == 1
        return s


@pytest.fixture
def core() -> Core:
    return Core()


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


# -- ext_proc ----------------------------------------------------------------------------------


async def test_a_json_exchange_is_routed_charged_and_settled_once(core: Core) -> None:
    s = Stream(core.servicer())
    headers = {"authorization": f"Bearer {core.key}", "accept-encoding": "gzip", "x-critique-model": "spoofed",
               OPT_IN_HEADER: "false", "x-request-id": "t1"}  # fmt: skip
    reply = await s.send(request_headers(headers))
    removed = set(reply.request_headers.response.header_mutation.remove_headers)
    assert removed == {"authorization", "accept-encoding", "x-critique-model", OPT_IN_HEADER}

    reply = await s.send(request_body(chat()))
    common = reply.request_body.response
    assert set_headers(common.header_mutation)[MODEL_HEADER] == MODEL and common.clear_route_cache

    reply = await s.send(response_headers(200, "application/json"))
    assert set_headers(reply.response_headers.response.header_mutation)["x-critique-request-id"].startswith("req_")
    assert not reply.HasField("mode_override")  # JSON: buffered, not streamed

    reply = await s.send(response_body(COMPLETION, end=True))
    charged = set_headers(reply.response_body.response.header_mutation)
    [record] = core.ledger.records
    assert record.status == "ok" and (record.input_tokens, record.output_tokens) == (9, 7)
    assert charged["x-critique-credits-charged"] == f"{Decimal(record.credits) / 1_000_000:.6f}"

    await s.finish()  # the RPC ends normally: nothing left to settle
    await asyncio.sleep(0)
    assert len(core.ledger.records) == 1


async def test_a_refusal_is_an_immediate_response_in_the_error_shape(core: Core) -> None:
    s = Stream(core.servicer())
    reply = await s.send(request_headers({"authorization": "Bearer crt_nope"}))
    immediate = reply.immediate_response
    assert immediate.status.code == 401 and immediate.details == "invalid_api_key"
    assert orjson.loads(immediate.body)["error"]["code"] == "invalid_api_key"
    await s.finish()
    assert core.ledger.holds == [] and core.ledger.records == []


async def test_the_end_user_header_is_recorded_wins_over_the_body_and_never_goes_upstream(core: Core) -> None:
    s = Stream(core.servicer())
    reply = await s.send(request_headers({"authorization": f"Bearer {core.key}", END_USER_HEADER: "hdr-user"}))
    assert END_USER_HEADER in reply.request_headers.response.header_mutation.remove_headers
    body = orjson.loads(chat())
    reply = await s.send(request_body(orjson.dumps({**body, "user": "body-user"})))
    assert not reply.request_body.response.body_mutation.body  # the body's user goes on as sent
    await s.send(response_headers(200, "application/json"))
    await s.send(response_body(COMPLETION, end=True))
    await s.finish()
    [record] = core.ledger.records
    assert record.end_user == "hdr-user"


async def test_a_bad_end_user_header_is_a_400_naming_it_and_holds_nothing(core: Core) -> None:
    s = Stream(core.servicer())
    await s.send(request_headers({"authorization": f"Bearer {core.key}", END_USER_HEADER: "x" * 300}))
    reply = await s.send(request_body(chat()))
    immediate = reply.immediate_response
    error = orjson.loads(immediate.body)["error"]
    assert immediate.status.code == 400 and (error["code"], error["param"]) == ("invalid_request", END_USER_HEADER)
    await s.finish()
    assert core.ledger.holds == [] and core.ledger.records == []


async def test_a_store_outage_fails_closed_with_503(core: Core) -> None:
    core.ledger.down = True
    s = Stream(core.servicer())
    await s.send(request_headers({"authorization": f"Bearer {core.key}"}))
    reply = await s.send(request_body(chat()))
    assert reply.immediate_response.status.code == 503
    assert orjson.loads(reply.immediate_response.body)["error"]["code"] == "service_unavailable"


async def test_a_stream_that_does_not_open_with_a_metered_path_is_refused(core: Core) -> None:
    s = Stream(core.servicer())
    reply = await s.send(request_headers({":path": "/api/v1/not-metered", "authorization": f"Bearer {core.key}"}))
    assert reply.immediate_response.status.code == 404


async def test_a_reply_envoy_made_before_the_request_reached_us_passes(core: Core) -> None:
    """The buffer filter's 413 (a body too large to buffer) goes through ext_proc's encoder
    path: the stream opens with response headers, nothing was admitted."""
    s = Stream(core.servicer())
    reply = await s.send(response_headers(413, "application/json"))
    assert reply.HasField("response_headers") and not reply.HasField("immediate_response")
    reply = await s.send(response_body(b'{"error": {}}', end=True))
    assert reply.HasField("response_body")
    assert core.ledger.records == []


async def test_under_a_path_prefix_the_path_names_the_endpoint(core: Core) -> None:
    s = Stream(core.servicer())
    reply = await s.send(request_headers({":path": "/llm" + CHAT.path + "?x=1", "authorization": f"Bearer {core.key}"}))
    assert reply.HasField("request_headers")


async def test_a_body_is_required(core: Core) -> None:
    s = Stream(core.servicer())
    reply = await s.send(request_headers({"authorization": f"Bearer {core.key}"}, end_of_stream=True))
    assert reply.immediate_response.status.code == 400


async def test_trailers_pass_through(core: Core) -> None:
    s = Stream(core.servicer())
    await s.send(request_headers({"authorization": f"Bearer {core.key}"}))
    reply = await s.send(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert reply.HasField("request_trailers")
    reply = await s.send(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    assert reply.HasField("response_trailers")


async def test_a_stream_is_switched_to_streamed_and_charged_in_band(core: Core) -> None:
    s = await core.admitted(core.servicer(), stream=True)
    reply = await s.send(response_headers(200, "text/event-stream"))
    assert reply.mode_override.response_body_mode == reply.mode_override.STREAMED
    assert "content-length" in reply.response_headers.response.header_mutation.remove_headers
    reply = await s.send(response_body(TOKEN, end=False))
    assert not reply.response_body.response.HasField("body_mutation")  # passes as it came
    reply = await s.send(response_body(USAGE + b"data: [DONE]\n\n", end=True))
    out = reply.response_body.response.body_mutation.body
    assert b": x-critique-request-id=req_" in out and out.endswith(b"data: [DONE]\n\n")
    await s.finish()
    [record] = core.ledger.records
    assert record.status == "ok" and record.output_tokens == 3


async def test_client_hang_up_at_a_yield_settles_once_from_the_done_callback(core: Core) -> None:
    """Envoy ends the stream while the handler waits at a `yield`: its `finally` may never run,
    so the RPC's done callback (another thread) starts the settlement."""
    servicer = core.servicer()
    s = await core.admitted(servicer, stream=True)
    await s.send(response_headers(200, "text/event-stream"))
    await s.send(response_body(TOKEN, end=False))  # the handler is now suspended at its yield
    s.context.end()
    await until(lambda: core.ledger.records)  # the callback hands the close to the loop
    await servicer.drain()
    [record] = core.ledger.records
    assert record.status == "interrupted" and record.estimated and record.output_tokens == 1  # one 4-byte token
    await s.replies.aclose()  # the abandoned handler is finalised later: no second settlement
    await servicer.drain()
    assert len(core.ledger.records) == 1 and core.ledger.holds[0].request_id == record.request_id


async def test_a_cancelled_handler_still_settles_once_even_when_cancelled_again(core: Core) -> None:
    """grpc.aio cancels the handler task when the client goes; the settlement runs in a task
    of its own, shielded, so cancelling the handler again while it settles changes nothing."""
    gate = Gate(core.ledger)
    servicer = core.servicer(gate)
    s = await core.admitted(servicer, stream=False)
    handler = asyncio.create_task(s.replies.__anext__())  # waiting for the response headers
    await asyncio.sleep(0)
    handler.cancel()
    await gate.waiting.wait()  # the handler's finally started the settlement
    handler.cancel()  # cancelled again while it awaits the shielded settlement
    s.context.end()  # and the RPC's done callback fires too
    gate.open.set()
    await servicer.drain()
    with pytest.raises(asyncio.CancelledError):
        await handler
    [record] = core.ledger.records
    assert record.status == "cancelled" and record.credits == 0  # no response started: released


async def test_the_done_callback_of_a_finished_stream_does_nothing(core: Core) -> None:
    servicer = core.servicer()
    s = await core.admitted(servicer, stream=False)
    await s.send(response_headers(200, "application/json"))
    await s.send(response_body(COMPLETION, end=True))
    await s.finish()
    assert not servicer._closings._running  # idle: no task was started
    assert len(core.ledger.records) == 1


# -- ext_authz ---------------------------------------------------------------------------------


def check(path: str, headers: dict[str, str], method: str = "POST") -> auth_pb.CheckRequest:
    req = auth_pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path = method, path
    http.headers.update(headers)
    return req


async def test_authz_admits_a_chat_request_and_hands_the_identity_to_ext_proc(core: Core) -> None:
    servicer = AuthorizationServicer(core.auth)
    headers = {"authorization": f"Bearer {core.key}", "x-critique-model": "x", OPT_IN_HEADER: "true"}
    reply = await servicer.Check(check(CHAT.path, headers), None)  # type: ignore[arg-type]
    assert reply.status.code == code_pb2.OK
    # the key and spoofed headers go; the opt-in option stays for ext_proc to read
    assert set(reply.ok_response.headers_to_remove) == {"authorization", "x-critique-model"}
    fields = reply.dynamic_metadata.fields
    assert fields["account"].string_value == "acct-1" and "write:inference" in fields["scopes"].string_value
    assert NAMESPACE == "envoy.filters.http.ext_authz"


async def test_authz_keeps_the_key_for_the_sidecars_own_routes(core: Core) -> None:
    reply = await AuthorizationServicer(core.auth).Check(check(MODELS_PATH, {"authorization": f"Bearer {core.key}"}, "GET"), None)  # type: ignore[arg-type]  # fmt: skip
    assert reply.status.code == code_pb2.OK and list(reply.ok_response.headers_to_remove) == []


async def test_authz_strips_every_x_critique_header_off_non_api_routes(core: Core) -> None:
    reply = await AuthorizationServicer(core.auth).Check(check("/inference-dashboard", {OPT_IN_HEADER: "true", "x-critique-a": "1"}, "GET"), None)  # type: ignore[arg-type]  # fmt: skip
    assert reply.status.code == code_pb2.OK
    assert set(reply.ok_response.headers_to_remove) == {OPT_IN_HEADER, "x-critique-a"}


@pytest.mark.parametrize(
    ("scopes", "authorization", "status", "rpc"),
    [
        (("read:inference",), "key", 403, code_pb2.PERMISSION_DENIED),  # a read-only key on the chat route
        (("write:inference",), "Bearer crt_nope", 401, code_pb2.UNAUTHENTICATED),
        (("write:inference",), None, 401, code_pb2.UNAUTHENTICATED),
    ],
)
async def test_authz_denials_carry_the_http_error(core: Core, scopes: tuple[str, ...], authorization: str | None,
                                                  status: int, rpc: int) -> None:  # fmt: skip
    key = core.keys.add("acct-2", scopes)
    headers = (
        {} if authorization is None else {"authorization": f"Bearer {key}" if authorization == "key" else authorization}
    )
    reply = await AuthorizationServicer(core.auth).Check(check(CHAT.path, headers), None)  # type: ignore[arg-type]
    assert reply.status.code == rpc and reply.denied_response.status.code == status
    assert orjson.loads(reply.denied_response.body)["error"]["type"]


async def test_authz_fails_closed_when_the_store_is_down(core: Core) -> None:
    core.keys.down = True
    reply = await AuthorizationServicer(core.auth).Check(check(CHAT.path, {"authorization": f"Bearer {core.key}"}), None)  # type: ignore[arg-type]  # fmt: skip
    assert reply.status.code != code_pb2.OK and reply.denied_response.status.code == 503
