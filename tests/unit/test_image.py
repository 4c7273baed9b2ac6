"""The Dockerfile (no Docker engine here, so what can be checked without one): pinned bases,
a non-root user, the entrypoint the manifests and the systemd unit run; and that entrypoint,
run from a fresh virtualenv holding only the built wheel, starts and answers gRPC health."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from critique_sidecar.devtools.stack import REPO, free_port, wait_until

from .envoy_yaml import DEPLOY, k8s


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def entrypoint() -> list[str]:
    last = {k: json.loads(v) for k, v in instructions() if k in ("ENTRYPOINT", "CMD")}
    return [*last["ENTRYPOINT"], *last["CMD"]]


def test_every_base_image_is_pinned_and_the_image_runs_as_a_non_root_user() -> None:
    stages = [v for k, v in instructions() if k == "FROM"]
    assert len(stages) >= 2  # multi-stage: build tools stay out of the image
    for stage in stages:
        image = stage.split()[0]
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+[-\w.]*$", image), f"unpinned base {image}"
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    [user] = [v for k, v in steps[last_from:] if k == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    pod = k8s("deployment.yaml")["spec"]["template"]["spec"]
    assert int(user.split(":")[0]) == pod["securityContext"]["runAsUser"]


def test_the_entrypoint_is_the_one_the_manifests_the_unit_and_the_docs_run() -> None:
    [sidecar] = [c for c in k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar"]
    assert sidecar["image"] == "critique-sidecar:0.1.0"
    assert entrypoint() == [*sidecar["command"], *sidecar["args"]] == ["critique-sidecar", "serve"]
    unit = (DEPLOY / "systemd/critique-sidecar.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert [Path(shlex.split(exec_start)[0]).name, *shlex.split(exec_start)[1:]] == entrypoint()
    assert "critique-sidecar serve" in (REPO / "docs/operations.md").read_text()


def test_the_built_wheel_runs_the_entrypoint_from_a_fresh_venv(tmp_path: Path, redis_url: str) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    [wheel] = wheels.glob("critique_sidecar-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin/python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True, timeout=120)
    # The dependencies come from the dev virtualenv's site-packages (no index here); the
    # project itself only from the wheel, so a file missing from the wheel fails this test.
    site = next((venv / "lib").glob("python*/site-packages"))
    dev_site = next((REPO / ".venv/lib").glob("python*/site-packages"))
    (site / "zz_deps.pth").write_text(str(dev_site) + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRITIQUE_", "PYTHONPATH", "VIRTUAL_ENV"))} | {
        "CRITIQUE_REDIS_URL": redis_url,
        "CRITIQUE_GRPC_LISTEN": f"127.0.0.1:{port}",
        "CRITIQUE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "CRITIQUE_JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
    }
    where = subprocess.run(
        [py, "-c", "import critique_sidecar; print(critique_sidecar.__file__)"], env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    command, *args = entrypoint()
    with open(tmp_path / "sidecar.log", "wb") as log:
        proc = subprocess.Popen([venv / "bin" / command, *args], env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:

        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, "sidecar from the wheel", timeout=60, proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=40)
    assert proc.returncode == 0, (tmp_path / "sidecar.log").read_text()


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin, *options = line.split()
            name, _, version = pin.partition("==")
            out[canonicalize_name(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return out


def test_the_lock_files_pin_every_dependency_within_its_range_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for lock, wanted in (
        ("requirements.lock", project["dependencies"]),
        ("requirements-dev.lock", [*project["dependencies"], *extras["dev"], *extras["otel"]]),
    ):
        pins = locked(REPO / lock)
        assert pins and all(
            v and hashes and all(h.startswith("sha256:") for h in hashes) for v, hashes in pins.values()
        )
        for spec in map(Requirement, wanted):
            version, _ = pins[canonicalize_name(spec.name)]
            assert spec.specifier.contains(version), f"{lock}: {spec.name}=={version} is outside {spec.specifier}"
        assert (
            "file://" not in (REPO / lock).read_text() and "/opt/" not in (REPO / lock).read_text()
        )  # no machine paths


def test_the_image_and_make_install_use_the_lock_file() -> None:
    runs = " ".join(v for k, v in instructions() if k == "RUN")
    assert "--require-hashes --wheel-dir /wheels -r requirements.lock" in runs
    assert ("COPY", "requirements.lock ./") in instructions()
    makefile = (REPO / "Makefile").read_text()
    assert (
        "--require-hashes -r requirements.lock" in makefile and "--require-hashes -r requirements-dev.lock" in makefile
    )
    # This virtualenv is what `make install` made from the lock: every pin is what is installed.
    for name, (version, _) in locked(REPO / "requirements-dev.lock").items():
        assert importlib.metadata.version(name) == version, name


def test_no_healthcheck_and_the_image_says_why_and_the_pods_probe_grpc_health() -> None:
    """Kubernetes ignores HEALTHCHECK; the pod probes the process's gRPC health instead."""
    assert "HEALTHCHECK" not in [k for k, _ in instructions()]
    assert "# No HEALTHCHECK: Kubernetes ignores it" in (REPO / "Dockerfile").read_text()
    [sidecar] = [c for c in k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar"]
    assert sidecar["livenessProbe"]["grpc"]["service"] == "liveness" and "grpc" in sidecar["readinessProbe"]
