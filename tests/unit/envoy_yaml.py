"""Reading Envoy configs and the deploy/ manifests in tests: shared by test_deploy.py and
test_envoy_configs.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from critique_sidecar.devtools.stack import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"


def load_module(path: Path, name: str) -> ModuleType:
    """A script that is not a package module (deploy/render.py, bench/envoy_configs.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def k8s(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


def hostport(address: dict[str, Any]) -> str:
    sa = address["socket_address"]
    return f"{sa['address']}:{sa['port_value']}"


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def endpoints(c: dict[str, Any]) -> list[str]:
    return [
        hostport(ep["endpoint"]["address"])
        for group in c["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    ]


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [lst for lst in config["static_resources"]["listeners"] if lst["name"] == name]
    return found


def routes(lst: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    return [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
