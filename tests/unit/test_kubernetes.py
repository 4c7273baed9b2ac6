"""The Kubernetes example as `kubectl kustomize` builds it (the real kustomize in kubectl): no
placeholder Secret is ever applied (the Redis URL comes from an uncommitted redis.env), and the
kubernetes-statefulset overlay runs the same pod with its journal on a PersistentVolumeClaim."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from critique_sidecar.devtools.stack import REPO

from .envoy_yaml import DEPLOY, K8S, k8s, load_module

render_k8s = load_module(DEPLOY / "render.py", "deploy_render_k8s")
URL = "rediss://:s3cret@redis.example.internal:6380/0"


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed for these tests"
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ as an operator has it after the documented step: redis.env written."""
    root = tmp_path_factory.mktemp("deploy")
    shutil.copytree(K8S, root / "kubernetes")
    shutil.copytree(DEPLOY / "kubernetes-statefulset", root / "kubernetes-statefulset")
    (root / "kubernetes/redis.env").write_text(f"url={URL}\n")
    return root


def built(path: Path) -> list[dict[str, Any]]:
    out = kustomize(path)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_without_redis_env_nothing_is_built_and_it_is_never_committed(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "kubernetes")
    (tmp_path / "kubernetes/redis.env").unlink(missing_ok=True)
    out = kustomize(tmp_path / "kubernetes")
    assert out.returncode != 0 and "redis.env" in out.stderr
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "deploy/kubernetes/redis.env\n" not in tracked.stdout
    committed = [
        d for n in tracked.stdout.split() if n.endswith(".yaml") for d in yaml.safe_load_all((REPO / n).read_text())
    ]
    assert committed and not [d for d in committed if isinstance(d, dict) and d.get("kind") == "Secret"]


def test_the_secret_comes_from_redis_env_and_the_pods_use_its_hashed_name(deploy_copy: Path) -> None:
    docs = built(deploy_copy / "kubernetes")
    [secret] = of_kind(docs, "Secret")
    assert secret["metadata"]["name"].startswith("critique-redis-")  # content hash: a new URL rolls the pods
    assert base64.b64decode(secret["data"]["url"]).decode() == URL
    [deployment] = of_kind(docs, "Deployment")
    [sidecar] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar"]
    [url] = [e for e in sidecar["env"] if e["name"] == "CRITIQUE_REDIS_URL"]
    assert url["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def test_the_statefulset_overlay_keeps_the_journal_on_a_claim_and_is_current(deploy_copy: Path) -> None:
    assert (DEPLOY / "kubernetes-statefulset/statefulset.yaml").read_text() == render_k8s.render_statefulset(), (
        "run `make deploy-config`"
    )
    docs = built(deploy_copy / "kubernetes-statefulset")
    assert not of_kind(docs, "Deployment")
    [sts] = of_kind(docs, "StatefulSet")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    pod = sts["spec"]["template"]["spec"]
    assert claim["metadata"]["name"] not in {v["name"] for v in pod["volumes"]}  # not an emptyDir any more
    [sidecar] = [c for c in pod["containers"] if c["name"] == "sidecar"]
    [mount] = [m for m in sidecar["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    [journal] = [e["value"] for e in sidecar["env"] if e["name"] == "CRITIQUE_JOURNAL_PATH"]
    assert journal.startswith(mount["mountPath"] + "/")
    # Otherwise the very pod of the Deployment.
    deployment = k8s("deployment.yaml")["spec"]["template"]
    rendered = {**sts["spec"]["template"], "spec": {**pod, "volumes": deployment["spec"]["volumes"]}}
    [secret] = of_kind(docs, "Secret")
    assert yaml.safe_dump(rendered).replace(secret["metadata"]["name"], "critique-redis") == yaml.safe_dump(deployment)


def test_alerts_name_the_generated_stat_prefix_and_say_how_to_change_it() -> None:
    from critique_sidecar.envoy.config import EnvoyOptions

    text = (DEPLOY / "prometheus/alerts.yaml").read_text()
    rules = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert set(re.findall(r'envoy_http_conn_manager_prefix="([^"]+)"', rules)) == {EnvoyOptions().stat_prefix}
    [sed] = re.findall(r"#\s+(sed '.*') alerts.yaml", text)
    changed = subprocess.run(
        ["sh", "-c", sed.replace("NAME", "edge_http")], input=text, capture_output=True, text=True, check=True
    ).stdout
    assert yaml.safe_load(changed) == yaml.safe_load(text.replace('prefix="ingress"', 'prefix="edge_http"'))


def test_the_statefulsets_service_name_is_a_headless_service_of_its_pods(deploy_copy: Path) -> None:
    docs = built(deploy_copy / "kubernetes-statefulset")
    [sts] = of_kind(docs, "StatefulSet")
    [governing] = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert governing["spec"]["selector"].items() <= labels.items()


def test_the_image_registry_is_set_in_one_place(deploy_copy: Path, tmp_path: Path) -> None:
    """deploy/kubernetes/image names the image for the Deployment and the StatefulSet overlay."""
    root = tmp_path / "deploy"
    shutil.copytree(deploy_copy, root)
    kustomization = root / "kubernetes/image/kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text())
    [entry] = [i for i in doc["images"] if i["name"] == "critique-sidecar"]
    entry["newName"] = "registry.example.com/team/critique-sidecar"
    kustomization.write_text(yaml.safe_dump(doc))
    for overlay, kind in (("kubernetes", "Deployment"), ("kubernetes-statefulset", "StatefulSet")):
        [workload] = of_kind(built(root / overlay), kind)
        images = {c["name"]: c["image"] for c in workload["spec"]["template"]["spec"]["containers"]}
        assert images["sidecar"] == "registry.example.com/team/critique-sidecar:0.1.0", overlay
        assert images["envoy"] == "envoyproxy/envoy:v1.40.0"
