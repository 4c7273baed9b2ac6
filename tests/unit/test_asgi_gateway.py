"""asgi/gateway.py: forwarding to the model's upstream, upstream failures, routing, lifespan.

The upstream is an httpx.MockTransport passed in through the client (no patching)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from critique_sidecar.app import build_components
from critique_sidecar.asgi.gateway import Forward, Gateway, Routes, UpstreamCut, upstreams
from critique_sidecar.config import Config
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.scopes import MODELS_PATH

CATALOG = load_catalog()
Message = dict[str, Any]


async def drive(app: Any, headers: dict[str, str], body: bytes = b"{}", *, path: str = CHAT.path,
                method: str = "POST", hang_up_after: int | None = None) -> list[Message]:  # fmt: skip
    """One request; with hang_up_after=N the client disconnects once N messages went out."""
    scope = {"type": "http", "method": method, "path": path, "query_string": b"a=1", "scheme": "http",
             "client": ("10.0.0.7", 5555), "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    sent: list[Message] = []
    gone = asyncio.Event()
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        if hang_up_after is None:
            await asyncio.Event().wait()  # the client stays until the server is done
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if hang_up_after is not None and len(sent) >= hang_up_after:
            gone.set()

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


def status_and_json(sent: list[Message]) -> tuple[int, Any]:
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def mock(handler: Callable[[httpx.Request], Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def forward_to(handler: Callable[[httpx.Request], Any], override: str | None = None) -> Forward:
    return Forward(upstreams(CATALOG, 5.0, override, mock(handler)))


def test_upstreams_come_from_the_catalog_or_the_override() -> None:
    routes = upstreams(CATALOG, 5.0)
    assert [r.url("/chat/completions") for r in routes["tencent/hy3-preview"].replicas] == [
        "http://127.0.0.1:8100/v1/chat/completions"
    ]
    assert len({id(u.client) for u in routes.values()}) == 1  # one pool per upstream
    override = upstreams(CATALOG, 5.0, "https://models.internal:9000/openai/v1")
    assert {r.url("/x") for u in override.values() for r in u.replicas} == {"https://models.internal:9000/openai/v1/x"}
    assert Config(upstream_override="").upstream_override is None
    for bad in ("no-port", "models.internal:9000", "ftp://x/v1", "http://u:p@x/v1", "http://x/v1?q=1"):
        with pytest.raises(ValueError):
            Config(upstream_override=bad)


async def test_forwards_to_the_models_upstream_without_routing_or_hop_headers() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"content-type": "application/json", "x-upstream": "1", "connection": "close", "date": "then"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b'{"ok": true}'))  # as a real transport's

    headers = {"x-critique-model": "tencent/hy3-preview", "content-type": "application/json", "connection": "keep-alive",
               "host": "gateway.example", "content-length": "2", "x-client": "c", "x-forwarded-for": "203.0.113.9"}  # fmt: skip
    sent = await drive(forward_to(upstream, "http://up.internal:7000/v1"), headers, b'{"m": 1}')
    [request] = seen
    assert str(request.url) == "http://up.internal:7000/v1/chat/completions?a=1" and request.method == "POST"
    assert request.content == b'{"m": 1}'
    assert dict(request.headers) == {
        "host": "up.internal:7000",
        "content-type": "application/json",
        "x-client": "c",
        "content-length": "8",
        "x-forwarded-for": "203.0.113.9, 10.0.0.7",
        "x-forwarded-proto": "http",
    }  # fmt: skip  (no routing header, no httpx defaults such as accept-encoding)
    assert sent[0]["status"] == 200
    returned = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert returned["x-upstream"] == "1" and "connection" not in returned and "date" not in returned
    assert b"".join(m["body"] for m in sent[1:]) == b'{"ok": true}'
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_stream_is_forwarded_chunk_by_chunk() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    sent = await drive(
        forward_to(lambda r: httpx.Response(200, content=chunks())), {"x-critique-model": "tencent/hy3-preview"}
    )
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]


async def test_unroutable_model_is_503_like_envoys_unrouted_route() -> None:
    sent = await drive(forward_to(lambda r: httpx.Response(200)), {"x-critique-model": "acme/nope"})
    assert status_and_json(sent) == (503, {"error": {
        "message": "The request could not be routed to a model", "type": "api_error", "code": "service_unavailable", "param": None}})  # fmt: skip


@pytest.mark.parametrize(
    "failure, status, code, message",
    [(httpx.ConnectError("refused"), 502, "upstream_error", "The model server failed to answer"),
     (httpx.ConnectTimeout("slow connect"), 502, "upstream_error", "The model server failed to answer"),
     (httpx.ReadTimeout("slow answer"), 504, "upstream_timeout", "The model server timed out"),
     (httpx.RemoteProtocolError("garbage"), 502, "upstream_error", "The model server failed to answer")],
)  # fmt: skip
async def test_upstream_failures_before_a_response(failure: Exception, status: int, code: str, message: str) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        raise failure

    sent = await drive(forward_to(upstream), {"x-critique-model": "tencent/hy3-preview"})
    assert status_and_json(sent) == (
        status,
        {"error": {"message": message, "type": "api_error", "code": code, "param": None}},
    )


async def test_upstream_cut_mid_stream_cuts_the_client_too() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise httpx.ReadError("connection reset")

    sent: list[Message] = []
    with pytest.raises(UpstreamCut):
        sent = await drive(
            forward_to(lambda r: httpx.Response(200, content=chunks())), {"x-critique-model": "tencent/hy3-preview"}
        )
    assert sent == []  # raised: the server drops the connection instead of ending the response


async def test_client_hang_up_cancels_the_upstream_request() -> None:
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await asyncio.Event().wait()  # an upstream that would go on forever
        finally:
            closed.set()

    sent = await drive(
        forward_to(lambda r: httpx.Response(200, content=chunks())),
        {"x-critique-model": "tencent/hy3-preview"},
        hang_up_after=2,
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # no end: the client is gone
    assert closed.is_set()


async def test_routes_chat_web_and_json_404() -> None:
    async def chat(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("chat")(scope, receive, send)

    web = Starlette(routes=[Route(MODELS_PATH, lambda request: PlainTextResponse("models"), methods=["GET"])])
    app = Routes(chat, web, list(web.routes))
    assert (await drive(app, {}))[1]["body"] == b"chat"
    assert status_and_json(await drive(app, {}, method="GET"))[1]["error"]["code"] == "method_not_allowed"
    assert (await drive(app, {}, path=MODELS_PATH, method="GET"))[1]["body"] == b"models"
    assert (await drive(app, {}, path=MODELS_PATH, method="POST"))[0]["status"] == 405  # the web app decides methods
    assert status_and_json(await drive(app, {}, path="/nope", method="GET")) == (404, {"error": {
        "message": "No such route", "type": "invalid_request_error", "code": "not_found", "param": None}})  # fmt: skip


async def test_lifespan_starts_and_stops_the_background_work(redis_url: str, tmp_path: Path) -> None:
    settings = Config(redis_url=redis_url, journal_path=tmp_path / "journal.jsonl")
    components = build_components(settings)
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    gateway = Gateway(components, Starlette(), settings, client=client)
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    replies: list[Message] = []

    async def receive() -> Message:
        if len(replies) == 1:
            tasks = gateway.lifecycle.tasks  # the same background work as Envoy mode's
            assert set(tasks) == {"journal-replay", "revocation-feed", "usage-retention", "backlog-gauges"}
            assert not any(t.done() for t in tasks.values())
        return events.pop(0)

    async def send(message: Message) -> None:
        replies.append(message)

    await gateway({"type": "lifespan"}, receive, send)
    assert replies == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert all(t.done() for t in gateway.lifecycle.tasks.values()) and client.is_closed


# -- the overall request deadline (a hold never outlives its request) --------------------------------


async def test_the_deadline_before_a_response_is_504() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    forward = Forward(upstreams(CATALOG, 5.0, client=mock(never)), deadline_s=0.2)
    sent = await drive(forward, {"x-critique-model": "tencent/hy3-preview"})
    assert status_and_json(sent)[0] == 504 and status_and_json(sent)[1]["error"]["code"] == "upstream_timeout"


async def test_the_deadline_cuts_a_stream_that_goes_on() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"data: {}\n\n"
            await asyncio.sleep(0.01)

    forward = Forward(
        upstreams(CATALOG, 5.0, client=mock(lambda r: httpx.Response(200, content=chunks()))), deadline_s=0.3
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamCut, match="deadline"):
        await drive(forward, {"x-critique-model": "tencent/hy3-preview"})
    assert asyncio.get_running_loop().time() - started < 3


def test_a_hold_ttl_not_longer_than_the_request_deadline_is_refused() -> None:
    from critique_sidecar.envoy.config import EnvoyOptions

    with pytest.raises(ValueError, match="hold_ttl_s"):
        Config(hold_ttl_s=600, request_deadline_s=600)
    default = Config()
    assert default.hold_ttl_s > default.request_deadline_s >= EnvoyOptions().upstream_timeout_s


# -- replicas: round robin, and a replica that refuses the connection passes the request on ------


def replicated(tmp_path: Path, urls: list[str]) -> Any:
    text = (Path(__file__).parents[2] / "src/critique_sidecar/catalog.toml").read_text()
    listed = ", ".join(f'"{u}"' for u in urls)
    text = text.replace('base_urls = ["http://127.0.0.1:8100/v1"]', f"base_urls = [{listed}]")
    (tmp_path / "catalog.toml").write_text(text)
    return load_catalog(tmp_path / "catalog.toml")


async def test_replicas_take_turns_and_a_refused_connection_goes_to_the_next(tmp_path: Path) -> None:
    catalog = replicated(tmp_path, ["http://a.internal:8000/v1", "http://b.internal:8000/v1"])
    hosts: list[str] = []
    down = {"a.internal"}

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host in down:
            raise httpx.ConnectError("refused")
        hosts.append(request.url.host)
        assert request.headers["host"] == f"{request.url.host}:8000"  # the replica's own Host
        return httpx.Response(200, stream=httpx.ByteStream(b"{}"))

    forward = Forward(upstreams(catalog, 5.0, client=mock(upstream)))
    headers = {"x-critique-model": "tencent/hy3-preview"}
    down.clear()
    for _ in range(4):
        assert (await drive(forward, headers))[0]["status"] == 200
    assert hosts == ["a.internal", "b.internal", "a.internal", "b.internal"]
    hosts.clear()
    down.add("a.internal")
    for _ in range(2):
        assert (await drive(forward, headers))[0]["status"] == 200
    assert hosts == ["b.internal", "b.internal"]  # a's turn passes to b: nothing was sent to a
    down.add("b.internal")
    assert status_and_json(await drive(forward, headers))[0] == 502  # every replica refused


def test_https_upstreams_verify_with_their_ca_file(tmp_path: Path) -> None:
    import ssl

    import trustme

    from critique_sidecar.asgi.gateway import ssl_context

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    text = (Path(__file__).parents[2] / "src/critique_sidecar/catalog.toml").read_text()
    text = text.replace(
        'base_urls = ["http://127.0.0.1:8100/v1"]',
        f'base_urls = ["https://llm.example:8443/v1"]\nca_file = "{tmp_path / "ca.pem"}"',
    )
    (tmp_path / "catalog.toml").write_text(text)
    server = load_catalog(tmp_path / "catalog.toml").upstreams["local"]
    context = ssl_context(server)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # only the upstream's CA, not the system's
