"""The Envoy configs the repo ships or generates: each validates with the real Envoy, none
routes anything but the sidecar's own pages to it, and one catalog entry is enough to price,
list and route a model."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from critique_sidecar import cli
from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.exchange import MODEL_HEADER
from critique_sidecar.devtools.stack import REPO, envoy_binary
from critique_sidecar.envoy.config import EnvoyOptions, render
from critique_sidecar.web.app import WebContext, build_web_app

from ..fakes import MemoryKeys
from .envoy_yaml import K8S, cluster, endpoints, k8s, listener, load_module, routes
from .test_metrics import chat, completion, make_core, run_json

# --- no shipped config routes /metrics (or anything else unplanned) to the sidecar ----------


def shipped_envoy_configs() -> dict[str, str]:
    """name -> config text: every Envoy config the repo ships or generates for users."""
    configs = {"envoy.yaml": (REPO / "envoy.yaml").read_text()}
    configs["configmap.yaml:envoy.yaml"] = k8s("configmap.yaml")["data"]["envoy.yaml"]
    configs["envoy-config --chat-auth ext_authz"] = render(load_catalog(), EnvoyOptions(chat_auth="ext_authz"))
    # IPv6 in brackets, as operators write it; other names for the stat prefix and virtual host.
    configs["envoy-config, IPv6 and named options"] = render(
        load_catalog(),
        EnvoyOptions(
            listen="[::]:8080", admin="[::1]:9901", sidecar_grpc=("[::1]:9001",), stat_prefix="api", virtual_host="v"
        ),
    )
    # What `critique-sidecar envoy-config` makes for upstreams given by host name (DNS clusters).
    configs["envoy-config, host-name upstreams"] = render(load_catalog(K8S / "catalog.toml"))
    bench = load_module(REPO / "bench/envoy_configs.py", "bench_envoy_configs")
    configs["bench fast_upstream"] = yaml.safe_dump(bench.fast_upstream(18100, 19911))
    configs["bench plain_gateway"] = yaml.safe_dump(bench.plain_gateway(18080, 19912, 18100))
    tracked = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for name in tracked.stdout.split():
        if name.startswith(("deploy/", "bench/")) or "/" not in name:
            doc = yaml.safe_load((REPO / name).read_text())
            if isinstance(doc, dict) and "static_resources" in doc:
                configs.setdefault(name, (REPO / name).read_text())
    return configs


SIDECAR_HTTP_PATHS = {
    "/api/v1/models",
    "/api/settings/inference-api",
    "/api/dashboard/inference-api",
    "/api/settings/inference-api/keys",
    "/api/settings/inference-api/limits",
    "/api/settings/inference-api/end-users",
    "/inference-dashboard",
}


@pytest.mark.parametrize("name", ["envoy.yaml", "configmap.yaml:envoy.yaml", "envoy-config --chat-auth ext_authz"])
def test_envoy_routes_only_the_sidecars_own_pages_to_it(name: str) -> None:
    config = yaml.safe_load(shipped_envoy_configs()[name])
    to_sidecar = [
        r["match"] for r in routes(listener(config, "critique")) if r.get("route", {}).get("cluster") == "sidecar_http"
    ]
    assert to_sidecar and all(set(m) == {"path"} for m in to_sidecar)  # exact paths, no prefixes
    assert {m["path"] for m in to_sidecar} == SIDECAR_HTTP_PATHS  # so never /metrics


def test_every_shipped_envoy_config_validates(tmp_path: Path) -> None:
    envoy = envoy_binary()
    configs = shipped_envoy_configs()
    assert len(configs) >= 5
    for n, (name, text) in enumerate(sorted(configs.items())):
        path = tmp_path / f"config-{n}.yaml"
        path.write_text(text)
        out = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "OK" in out.stdout + out.stderr, f"{name}:\n{out.stdout}\n{out.stderr}"


# --- one catalog: a fourth model is priced, listed and routed --------------------------------

FOURTH = "acme/tiny-1"
FOURTH_MODEL = f"""
[upstreams.acme]
base_urls = ["https://models.acme.test:8443/openai/v1/", "https://models.acme.test:9443/openai/v1"]

[[models]]
id = "{FOURTH}"
role = "Small"
owned_by = "acme"
context_window = 32_768
max_output_tokens = 4_096
upstream = "acme"
upstream_model = "tiny-1-2026"
price = {{ input = "1.00", output = "2.00" }}
"""


@pytest.fixture
def four_models(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text((REPO / "src/critique_sidecar/catalog.toml").read_text() + FOURTH_MODEL)
    return path


def test_a_new_catalog_model_is_routed(
    four_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRITIQUE_CATALOG_PATH", str(four_models))
    assert cli.main(["envoy-config"]) == 0  # what `critique-sidecar envoy-config` prints
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    [route] = [
        r
        for r in routes(listener(config, "critique"))
        if r.get("name") == "critique_model_chat_completions__acme_tiny_1"
    ]
    assert route["match"] == {"path": CHAT.path, "headers": [{"name": MODEL_HEADER, "string_match": {"exact": FOURTH}}]}
    # the product path mapped onto the base URL, the Host header the replica's own
    assert route["route"]["cluster"] == "upstream_acme"
    assert route["route"]["prefix_rewrite"] == "/openai/v1/chat/completions"
    assert route["route"]["auto_host_rewrite"] is True
    acme = cluster(config, "upstream_acme")
    assert endpoints(acme) == ["models.acme.test:8443", "models.acme.test:9443"] and acme["type"] == "STRICT_DNS"
    hostnames = [e["endpoint"]["hostname"] for e in acme["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert hostnames == ["models.acme.test:8443", "models.acme.test:9443"]
    # TLS verified against the base URL's host name, SNI from it, the system's CAs
    tls = acme["transport_socket"]["typed_config"]
    assert tls["sni"] == "models.acme.test"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "models.acme.test"}}
    ]
    assert validation["trusted_ca"]["filename"].startswith("/etc/")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    out = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_a_new_catalog_model_is_listed(four_models: Path) -> None:
    keys = MemoryKeys()
    key = keys.add("acme")
    app = build_web_app(WebContext(Authenticator(keys), load_catalog(four_models)))
    with TestClient(app) as client:
        resp = client.get("/api/v1/models", headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    [listed] = [m for m in resp.json()["data"] if m["id"] == FOURTH]
    assert (
        listed["pricing"]["input_usd_per_million"] == "1.00" and listed["pricing"]["output_usd_per_million"] == "2.00"
    )
    assert listed["context_window"] == 32_768 and listed["owned_by"] == "acme"


async def test_a_new_catalog_model_is_priced(four_models: Path) -> None:
    from critique_sidecar.core.metering import Meter
    from critique_sidecar.core.observe import NULL_OBSERVER

    core = make_core(NULL_OBSERVER)
    core.meter = Meter(load_catalog(four_models), core.meter._ledger, Decimal("0.01"))
    charged = await run_json(core, core.keys.add("acme"), chat(FOURTH), completion(50, 500))
    [record] = core.ledger.records
    # 50 in x $1/M + 500 out x $2/M = $0.00105 = 0.105 credits at $0.01 per credit
    assert record.model == FOURTH and record.usd == "0.00105" and record.credits == 105_000
    assert charged["x-critique-credits-charged"] == "0.105000" and record.price_version.endswith(f"/{FOURTH}/list")
