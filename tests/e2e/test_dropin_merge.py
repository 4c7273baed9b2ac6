"""`critique-sidecar envoy-merge` on an operator's existing Envoy (tests/e2e/existing_envoy.py):
the merged bootstrap validates with the real Envoy, every existing route answers exactly as it
did without the product, with the sidecar up and with it down, and the product's routes are
metered end to end through the openai SDK. One Envoy for the original, one for the merged."""

from __future__ import annotations

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

from .existing_envoy import Ports, answer, answers, edge_bootstrap, legacy_backend
from .helpers import balance, funded_key

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
        with legacy_backend(ports.backend):
            yield {"stack": stack, "ports": ports, "tls": client_tls, "original": original, "work": work}
    finally:
        stack.stop()


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
    assert before["www vhost"]["body"] == b"www"
    assert before["legacy prefix"]["headers"]["x-backend"] == "legacy"
    assert (
        before["regex route"]["headers"]["x-backend"] == "legacy"
        and before["regex miss"]["headers"]["x-backend"] is None
    )
    assert before["header route"]["body"] == b"blue tenant home"
    assert (before["their 404 mapper"]["status"], before["their 404 mapper"]["body"]) == (404, b"edge: nothing here")
    assert before["down backend"]["status"] == 503 and b"upstream connect error" in before["down backend"]["body"]
    assert before["their ext_authz"]["status"] == 403
    assert before["cors preflight"]["headers"]["access-control-allow-origin"] == "https://app.example.test"
    assert before["headers too large"]["status"] == 431
    assert before["tls listener"]["headers"]["x-backend"] == "legacy"

    args = [
        "--listener",
        "edge_http",
        "--virtual-host",
        "api",
        "--sidecar-grpc",
        stack.sidecar_environ()["CRITIQUE_GRPC_LISTEN"],
        "--sidecar-http",
        stack.sidecar_environ()["CRITIQUE_HTTP_LISTEN"],
    ]
    # The catalog as shipped, its model server moved to this test's fake one.
    catalog = work / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG.read_text().replace("127.0.0.1:8100", f"127.0.0.1:{stack.ports['upstream']}"))
    env = {**os.environ, "CRITIQUE_CATALOG_PATH": str(catalog)}
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

        stack.stop("sidecar")
        wait_until(lambda: not sidecar_healthy(ports.admin), "sidecar_grpc unhealthy in envoy")
        without_sidecar = answers(ports, edge["tls"])
        with pytest.raises(openai.APIStatusError) as down:
            sdk.chat.completions.create(model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "x"}])
        # The product's own failure keeps the product's error shape (its scoped local reply).
        assert down.value.status_code == 503 and "service_unavailable" in down.value.response.text
    finally:
        envoy.stop()
        if "sidecar" not in stack.procs:
            stack.start_sidecar()

    for name in before:
        assert with_sidecar[name] == before[name], f"{name}, sidecar up"
        assert without_sidecar[name] == before[name], f"{name}, sidecar down"


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
    assert before["their page path"]["body"].startswith(b"edge home")

    args = ["--listener", "edge_http", "--virtual-host", "api", "--path-prefix", "/llm"]
    args += ["--sidecar-grpc", stack.sidecar_environ()["CRITIQUE_GRPC_LISTEN"]]
    args += ["--sidecar-http", stack.sidecar_environ()["CRITIQUE_HTTP_LISTEN"]]
    catalog = work / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG.read_text().replace("127.0.0.1:8100", f"127.0.0.1:{stack.ports['upstream']}"))
    env = {**os.environ, "CRITIQUE_CATALOG_PATH": str(catalog)}
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
