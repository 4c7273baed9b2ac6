"""Import rules that keep the layers apart: the core is transport-free and storage-free; the
HTTP routes, the operator actions (provisioning/) and the background workers reach storage only
through the core's interfaces (core/stores.py and the other Protocols), and the customer's routes
reach the operator actions only through core.stores.KeyAdmin. Every import counts, including
those inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "critique_sidecar"

_STORAGE_AND_DOORS = (
    "critique_sidecar.store",
    "critique_sidecar.envoy",
    "critique_sidecar.asgi",
    "critique_sidecar.app",
    "critique_sidecar.admin",
    "critique_sidecar.lifecycle",
    "redis",
    "grpc",
    "envoy",
)
RULES = {
    "core": ("critique_sidecar.store", "critique_sidecar.envoy", "critique_sidecar.asgi", "critique_sidecar.web",
             "critique_sidecar.app", "critique_sidecar.lifecycle", "critique_sidecar.provisioning",
             "critique_sidecar.workers", "critique_sidecar.json_http", "grpc", "envoy", "starlette", "redis", "uvicorn"),
    "web": (*_STORAGE_AND_DOORS, "critique_sidecar.provisioning", "critique_sidecar.workers"),
    "provisioning": (*_STORAGE_AND_DOORS, "critique_sidecar.web", "critique_sidecar.workers", "uvicorn"),
    "workers": (*_STORAGE_AND_DOORS, "critique_sidecar.web", "critique_sidecar.provisioning", "starlette"),
    "json_http.py": (*_STORAGE_AND_DOORS, "critique_sidecar.web", "critique_sidecar.provisioning"),
    "app.py": ("grpc", "envoy", "critique_sidecar.envoy", "critique_sidecar.asgi"),  # wiring only: no transport
    "asgi": ("grpc", "envoy", "critique_sidecar.envoy"),
}  # fmt: skip


def imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute module names one file imports (relative imports resolved), at any depth."""
    package = ["critique_sidecar", *path.relative_to(PACKAGE).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def files(scope: str) -> list[Path]:
    target = PACKAGE / scope
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("scope", RULES)
def test_layer_imports_nothing_it_must_not(scope: str) -> None:
    banned = RULES[scope]
    broken = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in files(scope)
        for name in imports(path)
        if any(name == b or name.startswith(b + ".") for b in banned)
    }
    assert not broken, sorted(broken)


def test_the_checker_sees_relative_and_function_level_imports() -> None:
    source = "def f():\n    from ..store.keyspace import account\n    import redis.asyncio\n"
    found = imports(PACKAGE / "web" / "probe.py", source)
    assert {"critique_sidecar.store.keyspace", "redis.asyncio"} <= found


def test_the_asgi_gateway_loads_no_grpc() -> None:
    """Importing the ASGI front door (and the wiring it shares) pulls in neither grpc nor the
    Envoy protobufs: those belong to Envoy mode (envoy/server.py)."""
    code = "import sys, critique_sidecar.asgi.gateway; print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'envoy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
