"""asgi/middleware.py: the metered chat route around a tiny inner ASGI app, on a real Redis.

The ASGI calls are driven by hand (no server), so each test sees exactly which messages the
inner app got and which went out to the client, and in what order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from critique_sidecar.app import Components, build_components
from critique_sidecar.asgi import Middleware
from critique_sidecar.asgi._http import MAX_BODY_BYTES
from critique_sidecar.config import Config
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.wire import END_USER_HEADER
from critique_sidecar.envoy.config import EnvoyOptions
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.key_store import RedisKeyStore

MODEL = "deepseek/deepseek-v4-flash"
USAGE = {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
Message = dict[str, Any]


@pytest.fixture
async def core(redis_url: str, tmp_path: Path) -> AsyncIterator[Components]:
    c = build_components(Config(redis_url=redis_url, journal_path=tmp_path / "journal.jsonl", capture_sink="off"))
    yield c
    await c.aclose()


@pytest.fixture
async def key(core: Components, account: str) -> str:
    key, _ = await RedisKeyStore(core.redis).create(account, ("read:inference", "write:inference"))
    await RedisAccounts(core.redis).grant(account, 10_000_000)  # 10 credits
    return key


@dataclass
class Inner:
    """A tiny upstream-like app. Records what it received; `log` interleaves its sends with
    what reached the client, to prove holding (JSON) and pass-through (SSE)."""

    respond: Callable[[Callable[[Message], Awaitable[None]]], Awaitable[None]]
    log: list[str]
    scope: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    called: bool = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        self.scope = scope
        if scope["type"] != "http":
            return
        message = await receive()
        self.body = message["body"]
        assert message["more_body"] is False

        async def logged(msg: Message) -> None:
            self.log.append("inner:" + _label(msg))
            await send(msg)

        await self.respond(logged)


def _label(msg: Message) -> str:
    return "start" if msg["type"] == "http.response.start" else ("body" if msg.get("more_body") else "end")


def json_response(
    body: bytes, status: int = 200, parts: int = 2, extra: list[tuple[bytes, bytes]] | None = None
) -> Any:
    async def respond(send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        step = -(-len(body) // parts)
        for i in range(0, len(body), step):
            await send({"type": "http.response.body", "body": body[i : i + step], "more_body": i + step < len(body)})

    return respond


def completion(usage: dict[str, int] | None = USAGE) -> bytes:
    out: dict[str, Any] = {"id": "c1", "object": "chat.completion", "model": MODEL,
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok " * 12}}]}  # fmt: skip
    if usage:
        out["usage"] = usage
    return orjson.dumps(out)


def sse_events(n: int = 3, usage: bool = True) -> list[bytes]:
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    events = [event({"choices": [{"index": 0, "delta": {"content": "tok "}}]}) for _ in range(n)]
    if usage:
        events.append(
            event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}})
        )
    return [*events, b"data: [DONE]\n\n"]


def sse_response(events: list[bytes], fail_after: int | None = None) -> Any:
    async def respond(send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"9999")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, e in enumerate(events):
            if fail_after is not None and i == fail_after:
                raise ConnectionError("upstream cut")
            await send({"type": "http.response.body", "body": e, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return respond


@dataclass
class Result:
    messages: list[Message]

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any,
    *,
    key: str | None = None,
    body: bytes | list[bytes] = b"",
    path: str = CHAT.path,
    headers: dict[str, str] | None = None,
    log: list[str] | None = None,
    disconnect: bool = False,
) -> Result:
    """One HTTP request through `app`, as an ASGI server would make it."""
    parts = body if isinstance(body, list) else [body]
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if key:
        raw.append((b"authorization", f"Bearer {key}".encode()))
    if not isinstance(body, list):
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": raw, "query_string": b""}
    incoming: list[Message] = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]
    if disconnect:
        incoming = incoming[:-1] or [{"type": "http.disconnect"}]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(msg: Message) -> None:
        if log is not None:
            log.append("out:" + _label(msg))
        sent.append(msg)

    await app(scope, receive, send)
    return Result(sent)


def chat_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra})


async def records(core: Components, account: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await core.redis.xrange(ks.usage_stream(account))]


async def balance_and_held(core: Components, account: str) -> tuple[int, int]:
    b = await RedisAccounts(core.redis).balance(account)
    return b.balance, b.held


# -- construction and pass-through ------------------------------------------------------


def test_needs_components_or_auth_and_meter(core: Components) -> None:
    inner = Inner(json_response(b"{}"), [])
    with pytest.raises(TypeError):
        Middleware(inner)
    with pytest.raises(TypeError):
        Middleware(inner, auth=core.auth)
    with pytest.raises(TypeError):
        Middleware(inner, components=core, meter=core.meter)
    with pytest.raises(ValueError):
        Middleware(inner, components=core, max_body_bytes=0)
    assert Middleware(inner, components=core).credentials is core.credentials


def test_body_limit_is_envoys() -> None:
    assert EnvoyOptions().max_request_bytes == MAX_BODY_BYTES


async def test_non_http_scopes_and_other_paths_pass_straight_through(core: Components) -> None:
    inner = Inner(json_response(b'{"ok": true}'), [])
    app = Middleware(inner, components=core)
    lifespan = {"type": "lifespan"}
    await app(lifespan, None, None)  # type: ignore[arg-type]
    assert inner.scope is lifespan

    r = await call(app, path="/api/v1/models", headers={"authorization": "Bearer nonsense", "x-critique-model": "m"})
    assert r.status == 200 and r.body == b'{"ok": true}'
    assert inner.scope["headers"][:2] == [
        (b"authorization", b"Bearer nonsense"),
        (b"x-critique-model", b"m"),
    ]  # untouched
    assert "x-critique-request-id" not in r.headers
    r = await call(app, path=CHAT.path + "/")  # exact path only, as Envoy's route
    assert r.status == 200


# -- refusals: one error shape, nothing reaches the inner app, nothing charged ----------------


@pytest.mark.parametrize("authorization", [None, "Bearer crt_nonsense", "Basic abc"])
async def test_bad_keys_get_401_before_the_body_is_read(core: Components, authorization: str | None) -> None:
    inner = Inner(json_response(b"{}"), [])
    headers = {"authorization": authorization} if authorization else {}
    r = await call(Middleware(inner, components=core), headers=headers, body=chat_body())
    assert r.status == 401 and not inner.called
    assert r.headers["content-type"] == "application/json" and r.headers["content-length"] == str(len(r.body))
    assert r.json()["error"] == {
        "message": "Invalid API key. Send 'Authorization: Bearer crt_...' with an active Critique key.",
        "type": "authentication_error", "code": "invalid_api_key", "param": None,
    }  # fmt: skip


async def test_scope_model_and_body_errors(core: Components, key: str, account: str) -> None:
    inner = Inner(json_response(completion()), [])
    app = Middleware(inner, components=core)
    ro, _ = await RedisKeyStore(core.redis).create(account, ("read:inference",))
    assert (await call(app, key=ro, body=chat_body())).json()["error"]["code"] == "insufficient_scope"
    r = await call(app, key=key, body=chat_body(model="acme/nope"))
    assert (r.status, r.json()["error"]["code"], r.json()["error"]["param"]) == (404, "model_not_found", "model")
    r = await call(app, key=key, body=b"{nope")
    assert (r.status, r.json()["error"]["message"]) == (400, "request body is not valid JSON")
    r = await call(app, key=key, body=b"")
    assert (r.status, r.json()["error"]["message"]) == (400, "a JSON request body is required")
    assert not inner.called
    assert await balance_and_held(core, account) == (10_000_000, 0) and await records(core, account) == []


async def test_empty_balance_is_402(core: Components, account: str) -> None:
    key, _ = await RedisKeyStore(core.redis).create(account, ("write:inference",))
    inner = Inner(json_response(completion()), [])
    r = await call(Middleware(inner, components=core), key=key, body=chat_body())
    assert r.status == 402 and r.json()["error"]["code"] == "insufficient_credits" and not inner.called


async def test_declared_oversize_body_is_413_before_auth(core: Components) -> None:
    inner = Inner(json_response(b"{}"), [])
    app = Middleware(inner, components=core, max_body_bytes=100)
    r = await call(app, headers={"content-length": "101"}, body=[b"x"])
    assert r.status == 413 and not inner.called
    assert r.json()["error"] == {
        "message": "Request body exceeds 100 bytes", "type": "invalid_request_error", "code": "request_too_large", "param": None,
    }  # fmt: skip


async def test_streamed_oversize_body_is_413_and_holds_nothing(core: Components, key: str, account: str) -> None:
    inner = Inner(json_response(b"{}"), [])
    app = Middleware(inner, components=core, max_body_bytes=100)
    r = await call(app, key=key, body=[b"x" * 60, b"x" * 60])  # chunked: no content-length
    assert r.status == 413 and not inner.called
    assert await balance_and_held(core, account) == (10_000_000, 0)


async def test_client_gone_while_sending_the_body_is_not_charged(core: Components, key: str, account: str) -> None:
    inner = Inner(json_response(completion()), [])
    r = await call(Middleware(inner, components=core), key=key, body=[b'{"messages": [', b"]}"], disconnect=True)
    assert r.messages == [] and not inner.called
    assert await records(core, account) == []


# -- admitted JSON requests --------------------------------------------------------------------


async def test_inner_app_sees_the_admitted_request(core: Components, key: str) -> None:
    inner = Inner(json_response(completion()), [])
    spoofed = {"x-critique-account": "someone-else", "x-critique-model": "tencent/hy3-preview", "accept-encoding": "gzip",
               "transfer-encoding": "chunked", "x-other": "kept"}  # fmt: skip
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    await call(Middleware(inner, components=core), key=key, headers=spoofed, body=[body])
    seen = [(k.decode(), v.decode()) for k, v in inner.scope["headers"]]
    names = [k for k, _ in seen]
    assert "authorization" not in names and "accept-encoding" not in names and "transfer-encoding" not in names
    assert [v for k, v in seen if k.startswith("x-critique-")] == [MODEL]  # only the routing header, set by us
    assert ("x-other", "kept") in seen
    sent = json.loads(inner.body)
    assert sent["model"] == MODEL and sent["stream_options"] == {"include_usage": True}  # default filled, usage asked
    assert dict(seen)["content-length"] == str(len(inner.body))


async def test_the_end_user_is_recorded_and_its_header_never_reaches_the_inner_app(
    core: Components, key: str, account: str
) -> None:
    inner = Inner(json_response(completion()), [])
    app = Middleware(inner, components=core)
    await call(app, key=key, headers={END_USER_HEADER: "hdr-user"}, body=chat_body(user="body-user"))
    assert [k for k, _ in inner.scope["headers"] if k.decode().lower() == END_USER_HEADER] == []
    assert json.loads(inner.body)["user"] == "body-user"  # the body goes on as sent
    await call(app, key=key, body=chat_body(safety_identifier="sid", user="body-user"))
    await call(app, key=key, body=chat_body())
    assert [r[b"end_user"] for r in await records(core, account)] == [b"hdr-user", b"sid", b""]
    bad = await call(app, key=key, headers={END_USER_HEADER: "a\tb"}, body=chat_body())
    assert bad.status == 400 and json.loads(bad.body)["error"]["param"] == END_USER_HEADER


async def test_json_response_is_held_until_complete_then_charged(core: Components, key: str, account: str) -> None:
    log: list[str] = []
    spoof = [(b"x-critique-credits-charged", b"0"), (b"X-Critique-Request-Id", b"fake")]
    inner = Inner(json_response(completion(), parts=3, extra=spoof), log)
    r = await call(Middleware(inner, components=core), key=key, body=chat_body(), log=log)
    # Nothing went out before the inner app finished its body; then start + the whole body.
    assert log == ["inner:start", "inner:body", "inner:body", "inner:end", "out:start", "out:end"]
    assert r.status == 200 and r.body == completion()
    [record] = await records(core, account)
    assert r.headers["x-critique-request-id"] == record[b"request_id"].decode() != "fake"
    assert r.headers["x-critique-credits-charged"] == "0.000510"  # (10 * 0.15 + 12 * 0.30) / 1e6 USD / 0.01
    assert r.headers["x-critique-estimated-usd"] == "0.0000051"
    assert r.headers["content-length"] == str(len(completion()))
    assert [k for k, _ in r.messages[0]["headers"]].count(b"x-critique-credits-charged") == 1
    assert record[b"status"] == b"ok" and record[b"credits"] == b"510"
    assert await balance_and_held(core, account) == (10_000_000 - 510, 0)


async def test_upstream_error_is_passed_on_and_charges_nothing(core: Components, key: str, account: str) -> None:
    inner = Inner(json_response(b'{"error": {"message": "boom"}}', status=500), [])
    r = await call(Middleware(inner, components=core), key=key, body=chat_body())
    assert r.status == 500 and r.json() == {"error": {"message": "boom"}}
    assert "x-critique-credits-charged" not in r.headers and r.headers["x-critique-request-id"].startswith("req_")
    [record] = await records(core, account)
    assert record[b"status"] == b"upstream_error" and record[b"credits"] == b"0"
    assert await balance_and_held(core, account) == (10_000_000, 0)


async def test_inner_app_failing_before_its_response_releases_the_hold(
    core: Components, key: str, account: str
) -> None:
    async def explode(send: Any) -> None:
        raise RuntimeError("gateway bug")

    with pytest.raises(RuntimeError):
        await call(Middleware(Inner(explode, []), components=core), key=key, body=chat_body())
    [record] = await records(core, account)
    assert record[b"status"] == b"cancelled" and record[b"credits"] == b"0"
    assert await balance_and_held(core, account) == (10_000_000, 0)


# -- SSE ---------------------------------------------------------------------------------------


async def test_sse_chunks_pass_through_as_they_come(core: Components, key: str, account: str) -> None:
    log: list[str] = []
    inner = Inner(sse_response(sse_events(3)), log)
    r = await call(Middleware(inner, components=core), key=key, body=chat_body(stream=True), log=log)
    # Each inner message went out before the inner app sent the next one: nothing buffered.
    assert log == ["inner:start", "out:start"] + ["inner:body", "out:body"] * 5 + ["inner:end", "out:end"]
    assert "content-length" not in r.headers and r.headers["x-critique-request-id"].startswith("req_")
    text = r.body.decode()
    assert '"usage"' not in text  # the client did not ask for it
    [record] = await records(core, account)
    assert text.endswith(
        f": x-critique-request-id={record[b'request_id'].decode()} x-critique-credits-charged=0.000240"
        " x-critique-estimated-usd=0.0000024 estimated=false\ndata: [DONE]\n\n"
    )
    assert record[b"status"] == b"ok" and record[b"output_tokens"] == b"3"


async def test_sse_cut_by_the_inner_app_is_charged_as_interrupted(core: Components, key: str, account: str) -> None:
    inner = Inner(sse_response(sse_events(6, usage=False), fail_after=2), [])
    with pytest.raises(ConnectionError):
        await call(Middleware(inner, components=core), key=key, body=chat_body(stream=True))
    [record] = await records(core, account)
    assert record[b"status"] == b"interrupted" and record[b"estimated"] == b"1"
    assert record[b"output_tokens"] == b"2"  # two 4-byte tokens were delivered
    assert await balance_and_held(core, account) == (10_000_000 - int(record[b"credits"]), 0)


class GatedLedger:
    """The real ledger, with settlements held at a gate: lets a test cancel a request exactly
    while its settlement is under way, before anything reached Redis."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def place_hold(self, hold: Any) -> Any:
        return await self.inner.place_hold(hold)

    async def settle(self, record: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await self.inner.settle(record)


async def test_a_cancelled_request_task_still_settles_once(core: Components, key: str, account: str) -> None:
    """A server may cancel the request task when the client goes, and again while the closing
    settlement runs: the settlement must still complete (it runs in a task of its own)."""
    streaming = asyncio.Event()

    async def stream_then_hang(send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": sse_events(1, usage=False)[0], "more_body": True})
        streaming.set()
        await asyncio.Event().wait()  # an upstream that never finishes

    ledger = GatedLedger(core.ledger)
    meter = Meter(core.catalog, ledger, Decimal("0.01"))
    app = Middleware(Inner(stream_then_hang, []), auth=core.auth, meter=meter)
    request = asyncio.ensure_future(call(app, key=key, body=chat_body(stream=True)))
    await streaming.wait()
    request.cancel()
    await ledger.waiting.wait()  # the closing settlement has started
    request.cancel()  # cancelled again meanwhile
    with pytest.raises(asyncio.CancelledError):
        await request
    ledger.gate.set()
    await app.drain()
    [record] = await records(core, account)
    assert record[b"status"] == b"interrupted" and record[b"output_tokens"] == b"1"
    assert await balance_and_held(core, account) == (10_000_000 - int(record[b"credits"]), 0)
