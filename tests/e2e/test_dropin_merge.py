"""`critique-sidecar envoy-merge` on an operator's existing Envoy (tests/e2e/existing_envoy.py):
the merged bootstrap validates with the real Envoy, every existing route answers exactly as it
did without the product, with the sidecar up and with it down, and the product's routes are
metered end to end through the openai SDK. Inside the operator's listener the product answers
as in its own stack: its errors byte for byte whatever their local-reply settings (a 404 mapper,
a global JSON body_format), their CORS policy and route headers on every product route, the
dashboard page under --path-prefix in headless Chromium. Routes that could take the product's
paths are refused (case-insensitive, URI templates); unnamed listeners (Envoy's gzip example)
are chosen by address. One Envoy for the original, one for the merged, and the product's own."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import trustme
import yaml

from critique_sidecar.devtools.stack import REPO, Stack, envoy_binary, free_port, wait_until

from .existing_envoy import EDGE_HEADER, Ports, answer, answers, edge_bootstrap, examples_gzip_bootstrap, legacy_backend
from .helpers import balance, funded_key
from .test_dashboard_page import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e
DEFAULT_CATALOG = REPO / "src/critique_sidecar/catalog.toml"


def validate(path: Path) -> None:
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


class Envoy:
    def __init__(self, config: Path, admin: int, workdir: Path) -> None:
        with open(workdir / f"{config.stem}.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config),
                    "--log-level",
                    "warn",
                    "--concurrency",
                    "1",
                    "--base-id",
                    str(admin),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.admin = admin

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def admin_get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return str(r.read().decode())


def sidecar_healthy(admin: int) -> bool:
    flags = [line for line in admin_get(admin, "/clusters").splitlines() if line.startswith("sidecar_grpc::")]
    return any(line.endswith("::health_flags::healthy") for line in flags)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("dropin")
    stack = Stack(work / "stack", front_doors=())
    stack.start()  # Redis and the fake model server
    stack.start_sidecar()
    stack.start_envoy()  # the product's own stack: what its answers are compared with
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(work / "edge.crt"))
    server.private_key_pem.write_to_path(str(work / "edge.key"))
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    ports = Ports(http=free_port(), tls=free_port(), admin=free_port(), backend=free_port(), down=free_port())
    original = work / "edge.yaml"
    original.write_text(yaml.safe_dump(edge_bootstrap(ports, work / "edge.crt", work / "edge.key"), sort_keys=False))
    try:
        with legacy_backend(ports.backend) as seen:
            yield {"stack": stack, "ports": ports, "tls": client_tls, "original": original, "work": work, "seen": seen}
    finally:
        stack.stop()


def catalog_env(stack: Stack, work: Path) -> dict[str, str]:
    """The catalog as shipped, its model server moved to this test's fake one."""
    catalog = work / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG.read_text().replace("127.0.0.1:8100", f"127.0.0.1:{stack.ports['upstream']}"))
    return {**os.environ, "CRITIQUE_CATALOG_PATH": str(catalog)}


def sidecar_args(stack: Stack) -> list[str]:
    env = stack.sidecar_environ()
    return ["--sidecar-grpc", env["CRITIQUE_GRPC_LISTEN"], "--sidecar-http", env["CRITIQUE_HTTP_LISTEN"]]


ORIGIN = "https://app.example.test"  # the origin the edge's CORS policy allows


def product_probes(key: str, poor: str, writer: str) -> list[tuple[str, str, str, dict[str, str], bytes | None]]:
    """(name, method, path, headers, body): requests the product refuses, each decided in
    another place (ext_authz, ext_proc, a route of its own, the sidecar's HTTP app)."""
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    chat = "/api/v1/chat/completions"
    ok_body = b'{"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "x"}]}'
    return [
        ("models, no key", "GET", "/api/v1/models", {}, None),
        ("models, wrong scope", "GET", "/api/v1/models", {"authorization": f"Bearer {writer}"}, None),
        ("chat, no key", "POST", chat, {"content-type": "application/json"}, b"{}"),
        ("chat, unknown model", "POST", chat, auth, b'{"model": "nope", "messages": []}'),
        ("chat, bad JSON", "POST", chat, auth, b"{"),
        ("chat, no body", "GET", chat, {"authorization": f"Bearer {key}"}, None),
        ("chat, no credits", "POST", chat, {**auth, "authorization": f"Bearer {poor}"}, ok_body),
        ("chat, too large", "POST", chat, {**auth, "content-length": "99999999"}, None),
        ("chat, OPTIONS", "OPTIONS", chat, {}, None),
        ("settings, no key", "GET", "/api/settings/inference-api", {}, None),
        ("dashboard, bad days", "GET", "/api/dashboard/inference-api?days=5", auth, None),
    ]


def call(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> dict[str, Any]:
    """Status, every header and the exact body bytes of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return {"status": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()}, "body": resp.read()}
    finally:
        conn.close()


def merge_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "critique_sidecar.cli", "envoy-merge", *args], capture_output=True, text=True, env=env
    )


def run_envoy(config: Path, admin: int, workdir: Path, *, sidecar: bool = False) -> Envoy:
    envoy = Envoy(config, admin, workdir)
    wait_until(lambda: admin_get(admin, "/ready").strip() == "LIVE", "envoy", proc=envoy.proc)
    if sidecar:
        wait_until(lambda: sidecar_healthy(admin), "sidecar_grpc healthy in envoy", proc=envoy.proc)
    return envoy


def test_merged_edge_keeps_every_existing_route_and_meters_the_product(edge: dict[str, Any], account: str) -> None:
    stack: Stack = edge["stack"]
    ports: Ports = edge["ports"]
    work: Path = edge["work"]
    validate(edge["original"])

    envoy = run_envoy(edge["original"], ports.admin, work)
    try:
        before = answers(ports, edge["tls"])
    finally:
        envoy.stop()
    # The probes mean something: each kind of existing route answered as its owner set it up.
    assert before["home"]["status"] == 200 and before["home gzip"]["headers"]["content-encoding"] == "gzip"
    # Their direct responses are local replies too: in their JSON envelope.
    assert json.loads(before["www vhost"]["body"])["edge_error"] == "www"
    assert before["legacy prefix"]["headers"]["x-backend"] == "legacy"
    assert (
        before["regex route"]["headers"]["x-backend"] == "legacy"
        and before["regex miss"]["headers"]["x-backend"] is None
    )
    assert json.loads(before["header route"]["body"])["edge_error"] == "blue tenant home"
    assert before["their 404 mapper"]["status"] == 404
    assert json.loads(before["their 404 mapper"]["body"]) == {"edge_error": "edge: nothing here", "status": 404}
    assert before["down backend"]["status"] == 503 and b"upstream connect error" in before["down backend"]["body"]
    assert before["their ext_authz"]["status"] == 403
    assert before["cors preflight"]["headers"]["access-control-allow-origin"] == "https://app.example.test"
    assert before["headers too large"]["status"] == 431
    assert before["tls listener"]["headers"]["x-backend"] == "legacy"

    args = ["--listener", "edge_http", "--virtual-host", "api", *sidecar_args(stack)]
    env = catalog_env(stack, work)
    out = merge_cli(str(edge["original"]), *args, env=env)
    assert out.returncode == 0, out.stderr
    merged = work / "merged.yaml"
    merged.write_text(out.stdout)
    validate(merged)
    again = merge_cli(str(merged), *args, env=env)  # idempotent: merging the merged file changes nothing
    assert again.returncode == 0, again.stderr
    assert again.stdout == out.stdout

    envoy = run_envoy(merged, ports.admin, work, sidecar=True)
    try:
        with_sidecar = answers(ports, edge["tls"])
        key = funded_key(stack, account, "10")
        start = balance(stack, account)
        sdk = openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{ports.http}/api/v1", max_retries=0, timeout=30)
        raw = sdk.chat.completions.with_raw_response.create(
            model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "hello"}], max_tokens=20
        )
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        charged = Decimal(raw.headers["x-critique-credits-charged"])
        assert charged > 0 and balance(stack, account) == start - charged
        assert "deepseek/deepseek-v4-flash" in {m.id for m in sdk.models.list()}

        # Every refusal: the same status, content type and bytes as the product's own stack,
        # whatever the edge's 404 mapper and JSON body_format; the edge's route headers on each.
        poor = funded_key(stack, account + "-poor", "0")
        writer = funded_key(stack, account, "0", scopes="write:inference")
        for name, method, path, headers, body in product_probes(key, poor, writer):
            own = call(stack.ports["envoy"], method, path, headers, body)
            merged_answer = call(ports.http, method, path, headers, body)
            assert merged_answer["status"] == own["status"] >= 400, name
            assert merged_answer["body"] == own["body"], name
            assert merged_answer["headers"]["content-type"] == own["headers"]["content-type"], name
            assert merged_answer["headers"][EDGE_HEADER] == "edge_http", name
        # The openai SDK reads the product's error code through the edge.
        broke = openai.OpenAI(api_key=poor, base_url=sdk.base_url, max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as no_credits:
            broke.chat.completions.create(
                model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "x"}]
            )
        assert no_credits.value.status_code == 402 and no_credits.value.code == "insufficient_credits"

        # CORS as the edge configured it, on every product route, chat included.
        for path, method in (("/api/v1/chat/completions", "POST"), ("/api/v1/models", "GET")):
            preflight = call(
                ports.http,
                "OPTIONS",
                path,
                {
                    "origin": ORIGIN,
                    "access-control-request-method": method,
                    "access-control-request-headers": "authorization",
                },
                None,
            )
            assert preflight["status"] == 200, (path, preflight)
            assert preflight["headers"]["access-control-allow-origin"] == ORIGIN
            assert preflight["headers"]["access-control-allow-headers"] == "authorization, content-type"
        chat_body = (
            b'{"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}'
        )
        browser = {"origin": ORIGIN, "content-type": "application/json"}
        served = call(
            ports.http, "POST", "/api/v1/chat/completions", {**browser, "authorization": f"Bearer {key}"}, chat_body
        )
        assert served["status"] == 200 and served["headers"]["access-control-allow-origin"] == ORIGIN
        refused = call(ports.http, "POST", "/api/v1/chat/completions", browser, chat_body)
        assert refused["status"] == 401 and refused["headers"]["access-control-allow-origin"] == ORIGIN
        assert b'"code":"invalid_api_key"' in refused["body"]

        stack.stop("sidecar")
        wait_until(lambda: not sidecar_healthy(ports.admin), "sidecar_grpc unhealthy in envoy")
        without_sidecar = answers(ports, edge["tls"])
        with pytest.raises(openai.APIStatusError) as down:
            sdk.chat.completions.create(model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "x"}])
        # The product's own failure keeps the product's error shape (its scoped local reply).
        assert down.value.status_code == 503 and down.value.code == "service_unavailable"
        # The page is the sidecar's: its outage is the service's, never the model server's.
        page = call(ports.http, "GET", "/inference-dashboard", {}, None)
        assert page["status"] == 503 and json.loads(page["body"])["error"]["code"] == "service_unavailable"
        assert b"model server" not in page["body"]
    finally:
        envoy.stop()
        if "sidecar" not in stack.procs:
            stack.start_sidecar()

    for name in before:
        assert with_sidecar[name] == before[name], f"{name}, sidecar up"
        assert without_sidecar[name] == before[name], f"{name}, sidecar down"


def _with_their_route(original: Path, route: dict[str, Any], out: Path) -> Path:
    doc = yaml.safe_load(original.read_text())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][1]["routes"].insert(0, route)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.mark.parametrize(
    ("name", "taken", "match"),
    [
        ("any_case", "/api/v1/chat/completions", {"prefix": "/API/", "case_sensitive": False}),
        (
            "template",
            "/api/v1/models",
            {
                "path_match_policy": {
                    "name": "envoy.path.match.uri_template.uri_template_matcher",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                        "path_template": "/api/{version}/models",
                    },
                }
            },
        ),
    ],
)
def test_merge_refuses_case_insensitive_and_uri_template_routes_at_the_products_paths(
    edge: dict[str, Any], name: str, taken: str, match: dict[str, Any]
) -> None:
    """Envoy takes these routes (validate), and each would take /api/v1/models: refused."""
    route = {"name": f"their_{name}", "match": match, "route": {"cluster": "legacy"}}
    path = _with_their_route(edge["original"], route, edge["work"] / f"{name}.yaml")
    validate(path)
    out = merge_cli(str(path), "--listener", "edge_http", "--virtual-host", "api")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0  # one line, no traceback
    assert f"route their_{name} already matches the product's path {taken} " in out.stderr


def test_an_unnamed_listener_of_envoys_gzip_example_is_chosen_by_address(edge: dict[str, Any], account: str) -> None:
    stack: Stack = edge["stack"]
    work: Path = edge["work"]
    ports: Ports = edge["ports"]
    service, stats, admin = free_port(), free_port(), free_port()
    original = work / "gzip.yaml"
    original.write_text(yaml.safe_dump(examples_gzip_bootstrap(service, stats, admin, ports.backend), sort_keys=False))
    validate(original)
    env = catalog_env(stack, work)
    ambiguous = merge_cli(str(original), *sidecar_args(stack), env=env)
    assert ambiguous.returncode == 2
    assert f"several HTTP listeners (127.0.0.1:{service}, 127.0.0.1:{stats}): choose one with --listener" in (
        ambiguous.stderr
    )
    out = merge_cli(str(original), "--listener", f"127.0.0.1:{service}", *sidecar_args(stack), env=env)
    assert out.returncode == 0, out.stderr
    merged = work / "gzip-merged.yaml"
    merged.write_text(out.stdout)
    validate(merged)
    doc = yaml.safe_load(out.stdout)
    assert (
        doc["static_resources"]["listeners"][1]
        == yaml.safe_load(original.read_text())["static_resources"]["listeners"][1]
    )

    envoy = run_envoy(merged, admin, work, sidecar=True)
    try:
        key = funded_key(stack, account, "10")
        sdk = openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{service}/api/v1", max_retries=0, timeout=30)
        start = balance(stack, account)
        raw_reply = sdk.chat.completions.with_raw_response.create(
            model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "hello"}], max_tokens=20
        )
        assert balance(stack, account) == start - Decimal(raw_reply.headers["x-critique-credits-charged"])
        theirs = answer(service, "GET", "/file.json", {"accept-encoding": "gzip"})
        assert theirs["headers"]["x-backend"] == "legacy" and theirs["headers"]["content-encoding"] == "gzip"
        assert answer(stats, "GET", "/ready", {})["body"].strip() == b"LIVE"  # their stats listener, as before
    finally:
        envoy.stop()


def test_merge_refuses_a_route_already_at_the_products_paths(edge: dict[str, Any]) -> None:
    doc = yaml.safe_load(edge["original"].read_text())
    api = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][1]
    api["routes"].insert(0, {"name": "their_api", "match": {"prefix": "/api/"}, "route": {"cluster": "legacy"}})
    path = edge["work"] / "conflict.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = merge_cli(str(path), "--listener", "edge_http", "--virtual-host", "api")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0  # one line, no traceback
    assert "route their_api already matches the product's path /api/v1/chat/completions" in out.stderr


def test_merged_under_a_path_prefix_serves_the_product_there_and_nowhere_else(
    edge: dict[str, Any], account: str
) -> None:
    """--path-prefix /llm: the product answers under /llm only; a route of theirs at /api/
    (a conflict without the prefix) keeps serving /api/v1/..., and every other route is as before."""
    stack: Stack = edge["stack"]
    ports: Ports = edge["ports"]
    work: Path = edge["work"]
    doc = yaml.safe_load(edge["original"].read_text())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    api = hcm["route_config"]["virtual_hosts"][1]
    api["routes"].insert(0, {"name": "their_api", "match": {"prefix": "/api/"}, "route": {"cluster": "legacy"}})
    original = work / "edge-with-api.yaml"
    original.write_text(yaml.safe_dump(doc, sort_keys=False))
    theirs = [("their api", "GET", "/api/v1/models"), ("their page path", "GET", "/inference-dashboard")]

    def probe() -> dict[str, dict[str, Any]]:
        out = answers(ports, edge["tls"])
        for name, method, path in theirs:
            out[name] = answer(ports.http, method, path, {"authorization": f"Bearer {key}"})
        return out

    key = funded_key(stack, account, "10")
    envoy = run_envoy(original, ports.admin, work)
    try:
        before = probe()
    finally:
        envoy.stop()
    assert before["their api"]["headers"]["x-backend"] == "legacy"
    assert json.loads(before["their page path"]["body"])["edge_error"].startswith("edge home")

    args = ["--listener", "edge_http", "--virtual-host", "api", "--path-prefix", "/llm", *sidecar_args(stack)]
    env = catalog_env(stack, work)
    assert "already matches the product's path /api/" in merge_cli(str(original), *args[:4], env=env).stderr
    out = merge_cli(str(original), *args, env=env)
    assert out.returncode == 0, out.stderr
    merged = work / "merged-llm.yaml"
    merged.write_text(out.stdout)
    validate(merged)
    assert merge_cli(str(merged), *args, env=env).stdout == out.stdout

    envoy = run_envoy(merged, ports.admin, work, sidecar=True)
    try:
        with_sidecar = probe()
        start = balance(stack, account)
        base = f"http://127.0.0.1:{ports.http}/llm/api/v1"
        sdk = openai.OpenAI(api_key=key, base_url=base, max_retries=0, timeout=30)
        raw = sdk.chat.completions.with_raw_response.create(
            model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "hello"}], max_tokens=20
        )
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        charged = Decimal(raw.headers["x-critique-credits-charged"])
        assert charged > 0 and balance(stack, account) == start - charged
        assert "deepseek/deepseek-v4-flash" in {m.id for m in sdk.models.list()}
        # ext_authz guards the prefixed paths: no key, no models; a key without the scope, 403.
        anonymous = answer(ports.http, "GET", "/llm/api/v1/models", {})
        assert anonymous["status"] == 401 and b"invalid_api_key" in anonymous["body"]
        writer = funded_key(stack, account, "0", scopes="write:inference")
        assert answer(ports.http, "GET", "/llm/api/v1/models", {"authorization": f"Bearer {writer}"})["status"] == 403
        settings = answer(ports.http, "GET", "/llm/api/settings/inference-api", {"authorization": f"Bearer {key}"})
        assert settings["status"] == 200 and settings["headers"]["content-type"] == "application/json"
        # The query string survives the prefix rewrite: a bad one is the sidecar's 400.
        auth = {"authorization": f"Bearer {key}"}
        assert answer(ports.http, "GET", "/llm/api/dashboard/inference-api?days=7", auth)["status"] == 200
        bad_days = answer(ports.http, "GET", "/llm/api/dashboard/inference-api?days=5", auth)
        assert bad_days["status"] == 400 and b"'days' must be 7, 30 or 90" in bad_days["body"]
        page = answer(ports.http, "GET", "/llm/inference-dashboard", {})
        assert page["status"] == 200 and b'"api/dashboard/inference-api"' in page["body"]
        # The page in a browser: it calls the product under the prefix only, never the edge's /api/.
        edge["seen"].clear()
        owner = stack.create_key(account, "read:inference,write:inference,admin:inference")
        calls = drive_the_page(f"http://127.0.0.1:{ports.http}/llm/inference-dashboard", owner["key"])
        assert calls["requests"] and all(u.startswith(f"http://127.0.0.1:{ports.http}/llm/") for u in calls["requests"])
        assert not [seen for seen in edge["seen"] if "crt_" in seen[1]]  # no key ever reached their backend
        saved = answer(
            ports.http, "GET", "/llm/api/settings/inference-api", {"authorization": f"Bearer {owner['key']}"}
        )
        assert json.loads(saved["body"])["daily_request_cap"] == 5
        made = openai.OpenAI(api_key=calls["secret"], base_url=base, max_retries=0, timeout=30)
        assert "deepseek/deepseek-v4-flash" in {m.id for m in made.models.list()}
        # The unprefixed chat path is theirs now (their backend has no POST): nothing metered.
        unprefixed = answer(ports.http, "POST", "/api/v1/chat/completions", {"authorization": f"Bearer {key}"})
        assert unprefixed["status"] == 501 and b"critique" not in unprefixed["body"]
        assert balance(stack, account) == start - charged

        stack.stop("sidecar")
        wait_until(lambda: not sidecar_healthy(ports.admin), "sidecar_grpc unhealthy in envoy")
        without_sidecar = probe()
        with pytest.raises(openai.APIStatusError) as down:
            sdk.chat.completions.create(model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "x"}])
        # The scoped local replies follow the prefix.
        assert down.value.status_code == 503 and "service_unavailable" in down.value.response.text
    finally:
        envoy.stop()
        if "sidecar" not in stack.procs:
            stack.start_sidecar()

    for name in before:
        assert with_sidecar[name] == before[name], f"{name}, sidecar up"
        assert without_sidecar[name] == before[name], f"{name}, sidecar down"


def drive_the_page(url: str, key: str) -> dict[str, Any]:
    """Settings -> Connections in headless Chromium: load with `key`, save a control (daily
    request cap 5), create a key. Returns the URLs the page requested and the new key."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "no chromium: run `make install` (installs Debian's chromium)"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda req: requests.append(req.url))
            response = page.goto(url)
            assert response is not None and response.status == 200
            page.fill("#api-key", key)
            page.click("#load")
            page.wait_for_selector("#connections[data-conn-state=ready]", timeout=30_000)
            page.fill("#conn-daily_request_cap", "5")
            page.click("#conn-save")
            page.wait_for_selector("#connections[data-conn-state=saved]", timeout=30_000)
            page.fill("#newkey-name", "made-under-a-prefix")
            page.click("#newkey-create")
            page.wait_for_selector("#newkey-secret:not([hidden])", timeout=30_000)
            secret = page.text_content("#newkey-secret-value") or ""
            assert secret.startswith("crt_")
        finally:
            browser.close()
    return {"requests": requests, "secret": secret}
