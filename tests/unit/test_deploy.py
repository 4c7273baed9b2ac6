"""deploy/: the Kubernetes example and the systemd units agree with the sidecar's settings and
with the Envoy configs generated from the catalog; the alerts name real metrics and have runbook
sections. (The Envoy configs themselves: test_envoy_configs.py.)"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from critique_sidecar import cli
from critique_sidecar.config import Config
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.wire import DRAIN_GRACE_S
from critique_sidecar.devtools.stack import REPO, envoy_binary, free_port, relocate, wait_until
from critique_sidecar.envoy.config import EnvoyOptions, build_config
from critique_sidecar.envoy.server import LIVENESS_SERVICE

from .envoy_yaml import DEPLOY, K8S, cluster, endpoints, hostport, k8s, listener, load_module, routes

SYSTEMD = DEPLOY / "systemd"
SIDECAR_SETTINGS = {f"CRITIQUE_{name.upper()}" for name in Config.model_fields}


render_k8s = load_module(DEPLOY / "render.py", "deploy_render")


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


# --- the Kubernetes example -------------------------------------------------------------------


@pytest.fixture(scope="module")
def configmap() -> dict[str, Any]:
    return k8s("configmap.yaml")


@pytest.fixture(scope="module")
def pod_envoy(configmap: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(configmap["data"]["envoy.yaml"])


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    return k8s("deployment.yaml")["spec"]["template"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def sidecar_settings(pod: dict[str, Any]) -> Config:
    """The Config the sidecar container gets (the secret's URL stands in for the secret)."""
    values = {k: v for k, v in env_of(container(pod, "sidecar")).items() if isinstance(v, str)}
    return Config.model_validate({k.removeprefix("CRITIQUE_").lower(): v for k, v in values.items()})


def test_configmap_is_generated_from_the_kubernetes_catalog() -> None:
    assert (K8S / "configmap.yaml").read_text() == render_k8s.render_configmap(), "run `make deploy-config`"


def test_configmap_carries_the_catalog_and_the_envoy_config_made_from_it(
    configmap: dict[str, Any], pod_envoy: dict[str, Any]
) -> None:
    assert configmap["data"]["catalog.toml"] == (K8S / "catalog.toml").read_text()
    catalog = load_catalog(K8S / "catalog.toml")
    for model in catalog.models:
        c = cluster(pod_envoy, f"upstream_{model.upstream}")
        replicas = catalog.upstream_of(model).replicas()
        assert endpoints(c) == [f"{r.host}:{r.port}" for r in replicas]
        assert c["type"] == "STRICT_DNS"  # Services are names, resolved by Envoy
    assert hostport(listener(pod_envoy, "critique")["address"]) == "0.0.0.0:8080"


def test_kubernetes_catalog_prices_match_the_built_in_catalog() -> None:
    ours, builtin = load_catalog(K8S / "catalog.toml"), load_catalog()
    assert (ours.version, ours.default_model) == (builtin.version, builtin.default_model)
    strip = {"upstream"}
    assert [m.model_dump(exclude=strip) for m in ours.models] == [
        m.model_dump(exclude=strip) for m in builtin.models
    ], "deploy/kubernetes/catalog.toml: copy the built-in catalog's change, then `make deploy-config`"


def test_one_pod_runs_envoy_and_the_sidecar_from_one_configmap(pod: dict[str, Any], configmap: dict[str, Any]) -> None:
    assert [c["name"] for c in pod["spec"]["containers"]] == ["envoy", "sidecar"]
    [volume] = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] == render_k8s.CONFIGMAP_NAME
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}[volume["name"]]
        for c in pod["spec"]["containers"]
    }
    envoy = container(pod, "envoy")
    assert envoy["args"][envoy["args"].index("-c") + 1] == f"{mounts['envoy']}/envoy.yaml"
    assert str(sidecar_settings(pod).catalog_path) == f"{mounts['sidecar']}/catalog.toml"
    assert container(pod, "sidecar")["command"] + container(pod, "sidecar")["args"] == ["critique-sidecar", "serve"]


def test_the_sidecar_listens_where_the_pod_envoy_config_points(pod: dict[str, Any], pod_envoy: dict[str, Any]) -> None:
    s, defaults = sidecar_settings(pod), Config()
    [grpc_target] = endpoints(cluster(pod_envoy, "sidecar_grpc"))
    [http_target] = endpoints(cluster(pod_envoy, "sidecar_http"))
    # Envoy dials the sidecar's defaults over the pod's loopback ...
    assert (grpc_target, http_target) == (defaults.grpc_listen, defaults.http_listen)
    assert grpc_target.startswith("127.0.0.1:") and http_target.startswith("127.0.0.1:")
    # ... where the sidecar listens: same ports; gRPC also on the pod IP (the kubelet's probes),
    # HTTP on loopback only (only Envoy reaches it).
    assert port_of(s.grpc_listen) == port_of(grpc_target) and s.grpc_listen.startswith("0.0.0.0:")
    assert s.http_listen == http_target
    ports = {p["name"]: p["containerPort"] for p in container(pod, "sidecar")["ports"]}
    assert ports == {"grpc": port_of(s.grpc_listen), "metrics": port_of(s.metrics_listen)}


def test_sidecar_environment_names_real_settings_and_takes_redis_from_the_secret(pod: dict[str, Any]) -> None:
    env = env_of(container(pod, "sidecar"))
    assert set(env) <= SIDECAR_SETTINGS, f"not settings: {sorted(set(env) - SIDECAR_SETTINGS)}"
    ref = env["CRITIQUE_REDIS_URL"]["secretKeyRef"]
    [generator] = k8s("kustomization.yaml")["secretGenerator"]  # from redis.env, never committed
    assert ref["name"] == generator["name"] and generator["envs"] == ["redis.env"]
    assert (K8S / "redis.env.example").read_text().count(f"\n{ref['key']}=redis://") == 1
    s = sidecar_settings(pod)
    assert s.log_format == "json" and str(s.journal_path).startswith("/var/lib/critique/")
    [journal] = [
        m for m in container(pod, "sidecar")["volumeMounts"] if str(s.journal_path).startswith(m["mountPath"] + "/")
    ]
    assert not journal.get("readOnly")  # the journal must be writable (the root filesystem is not)


def test_sidecar_probes_use_the_grpc_health_service(pod: dict[str, Any]) -> None:
    sidecar, port = container(pod, "sidecar"), port_of(sidecar_settings(pod).grpc_listen)
    ready, live, startup = (
        sidecar["readinessProbe"]["grpc"],
        sidecar["livenessProbe"]["grpc"],
        sidecar["startupProbe"]["grpc"],
    )
    assert ready["port"] == live["port"] == startup["port"] == port
    assert ready.get("service", "") == ""  # follows the store and the drain (envoy/health.py)
    assert live["service"] == startup["service"] == LIVENESS_SERVICE  # never follows the store


def test_envoy_container_ports_probes_and_version(pod: dict[str, Any], pod_envoy: dict[str, Any]) -> None:
    envoy = container(pod, "envoy")
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports["http"] == port_of(hostport(listener(pod_envoy, "critique")["address"]))
    assert (
        ports["envoy-stats"]
        == render_k8s.STATS_LISTEN[1]
        == port_of(hostport(listener(pod_envoy, "envoy_stats")["address"]))
    )
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "envoy-stats"}
    version = next(
        line.split(":=")[1].strip()
        for line in (REPO / "Makefile").read_text().splitlines()
        if line.startswith("ENVOY_VERSION")
    )
    assert envoy["image"] == f"envoyproxy/envoy:v{version}"  # the Envoy the tests run


def test_every_container_has_requests_and_limits(pod: dict[str, Any]) -> None:
    for c in pod["spec"]["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (c["name"], kind)


def test_shutdown_leaves_time_to_drain(pod: dict[str, Any]) -> None:
    envoy_wait = container(pod, "envoy")["lifecycle"]["preStop"]["sleep"]["seconds"]
    sidecar_wait = container(pod, "sidecar")["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Envoy outlives the sidecar's drain (its streams pass through Envoy); the pod outlives both.
    assert envoy_wait >= sidecar_wait + DRAIN_GRACE_S
    assert pod["spec"]["terminationGracePeriodSeconds"] > envoy_wait


def test_metrics_are_scraped_from_the_pod_and_only_the_api_is_in_the_service(pod: dict[str, Any]) -> None:
    s = sidecar_settings(pod)
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == port_of(s.metrics_listen)
    service = k8s("service.yaml")
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_network_policy_opens_the_api_and_metrics_but_not_the_sidecar_grpc(pod: dict[str, Any]) -> None:
    policy = k8s("networkpolicy.yaml")["spec"]
    assert policy["podSelector"]["matchLabels"] == pod["metadata"]["labels"]
    open_to_all = {p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]}
    restricted = {p["port"] for rule in policy["ingress"] if "from" in rule for p in rule["ports"]}
    s = sidecar_settings(pod)
    assert open_to_all == {8080}
    assert restricted == {port_of(s.metrics_listen), render_k8s.STATS_LISTEN[1]}
    assert port_of(s.grpc_listen) not in open_to_all | restricted


def test_kustomization_lists_every_manifest() -> None:
    listed = set(k8s("kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_pod_envoy_stats_listener_only_forwards_stats_and_ready(pod_envoy: dict[str, Any]) -> None:
    forwarded = [r["match"]["path"] for r in routes(listener(pod_envoy, "envoy_stats")) if "route" in r]
    assert forwarded == ["/stats/prometheus", "/ready"]
    assert endpoints(cluster(pod_envoy, "envoy_admin")) == [hostport(pod_envoy["admin"]["address"])]
    assert hostport(pod_envoy["admin"]["address"]).startswith("127.0.0.1:")


def test_pod_envoy_serves_stats_and_ready_but_not_the_admin_interface(
    tmp_path: Path, pod_envoy: dict[str, Any]
) -> None:
    ports = {8080: free_port(), 9102: free_port(), 9901: free_port(), 9001: free_port(), 9002: free_port()}
    config = relocate(yaml.safe_load(yaml.safe_dump(pod_envoy)), ports)
    for lst in config["static_resources"]["listeners"]:
        lst["address"]["socket_address"]["address"] = "127.0.0.1"  # this machine's loopback, not 0.0.0.0
    path = tmp_path / "pod-envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--log-level", "error", "--concurrency", "1", "--base-id", str(ports[9901])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stats = f"http://127.0.0.1:{ports[9102]}"

    def get(url: str, method: str = "GET") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    try:
        wait_until(lambda: get(f"{stats}/ready")[0] == 200, "pod envoy", proc=proc)
        status, text = get(f"{stats}/stats/prometheus")
        assert status == 200 and "envoy_server_live{} 1" in text
        assert get(f"{stats}/config_dump")[0] == 404
        assert get(f"{stats}/quitquitquit", "POST")[0] == 404
        assert get(f"{stats}/clusters")[0] == 404
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- systemd units ----------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def env_file() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (SYSTEMD / "critique-sidecar.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return dict(pairs)


def test_env_file_names_real_settings_that_validate() -> None:
    env = env_file()
    assert set(env) <= SIDECAR_SETTINGS, f"not settings: {sorted(set(env) - SIDECAR_SETTINGS)}"
    s = Config.model_validate({k.removeprefix("CRITIQUE_").lower(): v for k, v in env.items()})
    assert s.redis_url.startswith("redis://") and s.log_format == "json"


def test_vm_sidecar_listens_where_the_generated_envoy_config_points() -> None:
    env, config = env_file(), yaml.safe_load((REPO / "envoy.yaml").read_text())
    assert endpoints(cluster(config, "sidecar_grpc")) == [env["CRITIQUE_GRPC_LISTEN"]] == [Config().grpc_listen]
    assert endpoints(cluster(config, "sidecar_http")) == [env["CRITIQUE_HTTP_LISTEN"]] == [Config().http_listen]
    # `critique-sidecar envoy-config --listen 0.0.0.0:8080`, as envoy.service's comment says,
    # keeps those sidecar addresses.
    vm = build_config(load_catalog(), EnvoyOptions(listen="0.0.0.0:8080"))
    assert endpoints(cluster(vm, "sidecar_grpc")) == [env["CRITIQUE_GRPC_LISTEN"]]
    assert "envoy-config --listen 0.0.0.0:8080" in (SYSTEMD / "envoy.service").read_text()


def test_sidecar_unit_runs_serve_with_the_env_file_and_a_kept_journal() -> None:
    svc = unit("critique-sidecar.service")["Service"]
    command = svc["ExecStart"].split()
    assert Path(command[0]).name == "critique-sidecar" and command[1:] == ["serve"]
    assert Path(svc["EnvironmentFile"]).name == "critique-sidecar.env"
    assert int(svc["TimeoutStopSec"]) > DRAIN_GRACE_S
    journal = Path(env_file()["CRITIQUE_JOURNAL_PATH"])
    assert journal.parent == Path("/var/lib") / svc["StateDirectory"]  # systemd creates and keeps it


def test_envoy_unit_validates_then_runs_the_same_config_and_stops_after_the_sidecar() -> None:
    u = unit("envoy.service")
    svc = u["Service"]
    pre, run = svc["ExecStartPre"].split(), svc["ExecStart"].split()
    assert pre[1:3] == ["--mode", "validate"] and pre[0] == run[0]
    assert pre[pre.index("-c") + 1] == run[run.index("-c") + 1]
    assert int(svc["TimeoutStopSec"]) > 0
    # systemd stops in reverse start order: the sidecar starts after Envoy, so it stops (and
    # drains) before Envoy does; Envoy must not order itself after the sidecar too.
    assert "envoy.service" in unit("critique-sidecar.service")["Unit"]["After"].split()
    assert "critique-sidecar.service" not in u["Unit"]["After"].split()
    assert "critique-sidecar.service" in u["Unit"]["Wants"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys and bad values are reported (the binaries are swapped
    for this checkout's, which exist)."""
    swaps = {
        "/opt/critique-sidecar/venv/bin/critique-sidecar": str(Path(sys.executable).parent / "critique-sidecar"),
        "/usr/local/bin/envoy": envoy_binary(),
    }
    for name in ("critique-sidecar.service", "envoy.service"):
        text = (SYSTEMD / name).read_text()
        for old, new in swaps.items():
            text = text.replace(old, new)
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


# --- alerts and the runbook -------------------------------------------------------------------

DOCS = REPO / "docs"


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_has_a_runbook_section_and_the_fields_a_pager_needs() -> None:
    runbook = (DOCS / "runbook.md").read_text()
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert f"\n### {name}\n" in runbook, f"docs/runbook.md has no section for {name}"
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{name.lower()}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"} and rule["annotations"]["summary"]


def test_alerts_use_only_metrics_that_exist() -> None:
    from prometheus_client import CollectorRegistry

    from critique_sidecar.observability.metrics import Metrics

    exposed = {
        line.split()[2]
        for line in Metrics(CollectorRegistry()).exposition().decode().splitlines()
        if line.startswith("# TYPE")
    }
    exposed |= {f"{n}_{s}" for n in exposed for s in ("bucket", "count", "sum")}
    envoy_documented = set(re.findall(r"`(envoy_[a-z_]+)", (DOCS / "operations.md").read_text()))
    for rule in alert_rules():
        expr = re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", rule["expr"])  # label matchers and groupings
        for name in re.findall(r"\b((?:critique|process|envoy)_[a-z_]+)\b", expr):
            if name.startswith("envoy_"):
                assert name in envoy_documented, f"{rule['alert']}: {name} is not in docs/operations.md's Envoy table"
            else:
                assert name in exposed, f"{rule['alert']}: the sidecar exports no {name}"


def test_runbook_cli_commands_parse() -> None:
    """Every `critique-sidecar ...` command the runbook tells an operator to run is one the CLI accepts."""
    parser = cli.build_parser()
    commands = re.findall(r"critique-sidecar ((?:keys|credits|settings) [^`\n#]+)", (DOCS / "runbook.md").read_text())
    assert len(commands) >= 10
    for command in commands:
        try:
            parser.parse_args(command.split())
        except SystemExit:
            pytest.fail(f"the runbook's `critique-sidecar {command.strip()}` does not parse")
