"""The gateways under test, each started in front of the same fast upstream.

A gateway is a URL plus the processes whose CPU it spends. To add one (an ASGI front door, more
sidecar processes, ...), write a `start_*` function returning a Gateway and register it in
GATEWAYS; run.py benchmarks, checks and reports every registered gateway the same way."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import envoy_configs
import procs
import yaml
from envoy_configs import MODEL
from wrk import REQUEST_BODY

from critique_sidecar.devtools import litellm_proxy
from critique_sidecar.devtools.stack import Stack, free_port, wait_until

BENCH = Path(__file__).resolve().parent

CHAT_PATH = "/api/v1/chat/completions"
ACCOUNT = "bench"
GRANT_CREDITS = "1000000000"  # far more than any run spends, so admission never says 402


@dataclass
class Gateway:
    name: str
    label: str
    url: str
    pids: dict[str, int]  # role ("envoy", "sidecar", "redis") -> pid
    stop: Callable[[], None]
    api_key: str | None = None
    stack: Stack | None = None  # metered gateways: for ledger checks
    checked_headers: dict[str, str] = field(default_factory=dict)  # x-critique-* of the sanity request
    required_headers: tuple[str, ...] = ()  # the sanity request must carry these (e.g. rate limits)

    def balance(self) -> dict[str, str] | None:
        if self.stack is None:
            return None
        return dict(json.loads(self.stack.cli("credits", "show", "--account", ACCOUNT, "--json")))


@dataclass
class Upstream:
    envoy: procs.EnvoyProcess
    port: int


def start_upstream(workdir: Path) -> Upstream:
    port, admin = free_port(), free_port()
    # One worker: the gateways hold a few keep-alive connections, and a second upstream
    # thread would only compete with the gateway under test for the machine's two cores.
    envoy = procs.start_envoy("upstream", envoy_configs.fast_upstream(port, admin), workdir, admin, concurrency=1)
    return Upstream(envoy, port)


def start_plain(workdir: Path, upstream: Upstream) -> Gateway:
    port, admin = free_port(), free_port()
    envoy = procs.start_envoy("plain", envoy_configs.plain_gateway(port, admin, upstream.port), workdir, admin)
    return Gateway("plain", "plain Envoy", f"http://127.0.0.1:{port}{CHAT_PATH}", {"envoy": envoy.pid}, envoy.stop)


def _start_funded(stack: Stack) -> str:
    """Start the stack, fund the bench account, return its key (stopping the stack on failure)."""
    try:
        stack.start()
        stack.cli("credits", "grant", "--account", ACCOUNT, "--credits", GRANT_CREDITS)
        return str(stack.create_key(ACCOUNT)["key"])
    except BaseException:
        stack.stop()
        raise


def _start_stack(
    name: str,
    label: str,
    workdir: Path,
    upstream: Upstream,
    envoy_config: Path | None = None,
    sidecars: int = 1,
    sidecar_env: dict[str, str] | None = None,
) -> Gateway:
    """The full metered path: the repo's Stack (Redis, sidecar, Envoy), its model clusters
    pointed at the fast upstream (the repo's envoy.yaml sends models to port 8100, which
    Stack relocates to ports['upstream'])."""
    extra = {"envoy_config": envoy_config} if envoy_config else {}
    stack = Stack(
        workdir / name,
        ports={"upstream": upstream.port},
        start_upstream=False,
        sidecar_count=sidecars,
        sidecar_env=sidecar_env or {},
        **extra,
    )
    key = _start_funded(stack)
    pids = {role: stack.procs[role].pid for role in ("envoy", "sidecar", "redis")}
    pids.update({f"sidecar{i}": stack.procs[f"sidecar{i}"].pid for i in range(1, sidecars)})
    return Gateway(name, label, stack.base_url + CHAT_PATH, pids, stack.stop, api_key=key, stack=stack)


def start_metered(workdir: Path, upstream: Upstream) -> Gateway:
    return _start_stack("metered", "metered (repo envoy.yaml)", workdir, upstream)


def start_metered_2proc(workdir: Path, upstream: Upstream) -> Gateway:
    """Two sidecar processes on separate ports, balanced by Envoy (its few long-lived HTTP/2
    connections would all land on one process behind a single SO_REUSEPORT port)."""
    return _start_stack("metered-2proc", "metered, 2 sidecar processes", workdir, upstream, sidecars=2)


def start_two_stream(workdir: Path, upstream: Upstream) -> Gateway:
    """ext_authz + ext_proc on chat: two gRPC streams per request instead of one."""
    config = workdir / "envoy-two-stream.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "critique_sidecar.cli", "envoy-config", "--chat-auth", "ext_authz"],
        capture_output=True,
        text=True,
        check=True,
    )
    config.write_text(out.stdout)
    return _start_stack("two-stream", "metered, ext_authz + ext_proc", workdir, upstream, envoy_config=config)


def start_baseline(workdir: Path, upstream: Upstream, ref: str) -> Gateway:
    """The metered path as it was at git `ref` (its sidecar code and its envoy.yaml), measured in
    the same run as the working tree's: before/after figures that share the machine's noise.
    The old code runs on this virtualenv's dependencies (PYTHONPATH puts its src/ first)."""
    src = workdir / "baseline-src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(BENCH.parent), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return _start_stack(
        "baseline",
        f"metered at {ref} (baseline)",
        workdir,
        upstream,
        envoy_config=src / "envoy.yaml",
        # Its own catalog too: the catalog's format changes with the code that reads it.
        sidecar_env={
            "PYTHONPATH": str(src / "src"),
            "CRITIQUE_CATALOG_PATH": str(src / "src/critique_sidecar/catalog.toml"),
        },
    )


def start_bare(
    workdir: Path,
    upstream: Upstream,
    name: str = "floor",
    label: str = "floor: same Envoy, bare ext_proc servicer",
    processing_mode: dict[str, str] | None = None,
    route_in_headers: bool = False,
    env: dict[str, str] | None = None,
    handler: str | None = None,
    python: str | None = None,
    extra_args: tuple[str, ...] = (),
    config_hook: Callable[[dict[str, Any]], None] | None = None,
) -> Gateway:
    """The repo's envoy.yaml (its ext_proc processing mode changed by `processing_mode`, if
    given) with its ext_proc phases answered by bench/bare_ext_proc.py: constant replies, no
    keys, no parsing, no Redis."""
    stack = Stack(workdir / name, ports={"upstream": upstream.port}, start_upstream=False)
    config = yaml.safe_load(stack.envoy_yaml().read_text())
    if processing_mode:
        _set_processing_mode(config, processing_mode)
    if config_hook:
        config_hook(config)
    listen = f"127.0.0.1:{stack.ports['grpc']}"
    argv = [python or sys.executable, str(BENCH / "bare_ext_proc.py"), "--listen", listen, "--model", MODEL]
    with open(workdir / name / "bare-ext-proc.log", "ab") as log:
        argv += ["--route-in-headers"] if route_in_headers else []
        argv += ["--handler", handler] if handler else []
        bare = subprocess.Popen(
            argv + list(extra_args),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", stack.ports["grpc"]), timeout=1).close() is None,
            "bare ext_proc",
            proc=bare,
        )
        envoy = procs.start_envoy(f"{name}-envoy", config, workdir / name, stack.ports["admin"])
    except BaseException:
        procs.stop_process(bare)
        raise

    def stop() -> None:
        envoy.stop()
        procs.stop_process(bare)

    url = f"http://127.0.0.1:{stack.ports['envoy']}{CHAT_PATH}"
    return Gateway(name, label, url, {"envoy": envoy.pid, "sidecar": bare.pid}, stop)


def _set_processing_mode(node: Any, mode: dict[str, str]) -> None:
    """Update every ext_proc filter's processing mode in an Envoy config, in place."""
    if isinstance(node, dict):
        if str(node.get("@type", "")).endswith("ext_proc.v3.ExternalProcessor"):
            node["processing_mode"].update(mode)
        for value in node.values():
            _set_processing_mode(value, mode)
    elif isinstance(node, list):
        for value in node:
            _set_processing_mode(value, mode)


def start_floor(workdir: Path, upstream: Upstream) -> Gateway:
    """The design's floor: the same four ext_proc phases on the repo's envoy.yaml, bare servicer."""
    return start_bare(workdir, upstream)


def start_asgi(workdir: Path, upstream: Upstream) -> Gateway:
    """The ASGI front door: `critique-sidecar gateway` (uvicorn, the Middleware around the
    reference gateway's httpx proxy) with no Envoy, models sent to the same fast upstream.
    Its process is listed as "sidecar": it is the process that meters, but its CPU also
    covers the proxying Envoy does on the metered path."""
    stack = Stack(workdir / "asgi", ports={"upstream": upstream.port}, start_upstream=False, front_doors=("asgi",))
    key = _start_funded(stack)
    pids = {"sidecar": stack.procs["gateway"].pid, "redis": stack.procs["redis"].pid}
    return Gateway(
        "asgi",
        "ASGI gateway (uvicorn, no Envoy)",
        stack.gateway_url + CHAT_PATH,
        pids,
        stack.stop,
        api_key=key,
        stack=stack,
    )


# >>> limits
# Every limit set, on the account and on its key, high enough never to refuse the bench's load:
# the admission script then does all of its rate-limit work (both windows, concurrency, the key's
# cap) on every request.
BENCH_LIMITS = ("--rpm", "1000000", "--tpm", "1000000000", "--max-concurrent", "10000")


def start_metered_limits(workdir: Path, upstream: Upstream) -> Gateway:
    gw = _start_stack("metered-limits", "metered, rate limits set (account + key)", workdir, upstream)
    assert gw.stack is not None
    gw.stack.cli("settings", "set", "--account", ACCOUNT, *BENCH_LIMITS)
    [key] = json.loads(gw.stack.cli("keys", "list", "--account", ACCOUNT, "--json"))
    gw.stack.cli("keys", "set-limits", key["key_id"], *BENCH_LIMITS, "--daily-credit-cap", GRANT_CREDITS)
    gw.required_headers = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-request-id")
    return gw


# <<< limits


def start_litellm(workdir: Path, upstream: Upstream) -> Gateway:
    """LiteLLM's proxy (one worker, no database, its master key as the only key) forwarding the same model to the same
    fast upstream as an OpenAI-compatible server: the comparison the product is measured against.
    Its process is listed as "sidecar" (the one process doing the gateway's work)."""
    model = {
        "model_name": MODEL,
        "litellm_params": {
            "model": f"openai/{MODEL}",
            "api_base": f"http://127.0.0.1:{upstream.port}/v1",
            "api_key": "bench",
        },
    }
    server = litellm_proxy.start(workdir, [model])
    label = f"LiteLLM {litellm_proxy.VERSION} proxy (1 worker, master key)"
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    pids = {"sidecar": server.proc.pid}
    return Gateway("litellm", label, url, pids, server.stop, api_key=server.master_key)


def start_metered_otel(workdir: Path, upstream: Upstream, ratio: float = 1.0) -> Gateway:
    """The metered path with OpenTelemetry tracing on (four spans per sampled request, batched
    and exported over OTLP/HTTP to bench/otlp_sink.py), every request sampled or `ratio` of
    them (the SDK's parentbased_traceidratio sampler); compare with "metered" in the same run
    for the cost of tracing (off, the sidecar never imports OpenTelemetry)."""
    port = free_port()
    name = "metered-otel" if ratio == 1.0 else f"metered-otel-{ratio:g}"
    (workdir / name).mkdir(parents=True, exist_ok=True)
    with open(workdir / name / "otlp-sink.log", "ab") as log:
        sink = subprocess.Popen(
            [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, "otlp sink", proc=sink
        )
        env = {"CRITIQUE_OTEL_ENDPOINT": f"http://127.0.0.1:{port}"}
        if ratio != 1.0:
            env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
        label = "metered, OpenTelemetry tracing on" + ("" if ratio == 1.0 else f", {ratio:.0%} sampled")
        gw = _start_stack(name, label, workdir, upstream, sidecar_env=env)
    except BaseException:
        procs.stop_process(sink)
        raise
    stop_stack = gw.stop

    def stop() -> None:
        stop_stack()
        procs.stop_process(sink)

    gw.stop = stop
    return gw


GATEWAYS: dict[str, Callable[[Path, Upstream], Gateway]] = {
    "plain": start_plain,
    "metered": start_metered,
    "metered-limits": start_metered_limits,
    "floor": start_floor,
    "metered-2proc": start_metered_2proc,
    "two-stream": start_two_stream,
    "asgi": start_asgi,
    "litellm": start_litellm,
    "metered-otel": start_metered_otel,
    "metered-otel-0.1": functools.partial(start_metered_otel, ratio=0.1),
}


def check_one_request(gw: Gateway) -> dict[str, str]:
    """Send one request before measuring: a gateway that does not answer 200 (or does not meter
    when it should) would make every number meaningless. Returns the interesting headers."""
    headers = {"Content-Type": "application/json"}
    if gw.api_key:
        headers["Authorization"] = f"Bearer {gw.api_key}"
    req = urllib.request.Request(gw.url, data=json.dumps(REQUEST_BODY).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, body, got = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, body, got = err.code, err.read(), dict(err.headers)
    if status != 200 or "usage" not in json.loads(body or b"{}"):
        raise RuntimeError(f"{gw.name}: sanity request got {status}: {body[:300]!r}")
    lower = {k.lower(): v for k, v in got.items()}
    missing = [h for h in gw.required_headers if h not in lower]
    if missing:
        raise RuntimeError(f"{gw.name}: sanity request lacks {missing}: {got}")
    charged = {k: v for k, v in lower.items() if k.startswith("x-critique-")}
    if gw.stack is not None and "x-critique-credits-charged" not in charged:
        raise RuntimeError(f"{gw.name}: metered gateway answered without X-Critique-Credits-Charged: {got}")
    return charged


def billed_requests(gw: Gateway, before: dict[str, str], after: dict[str, str], charge: str) -> float:
    """How many requests the ledger charged between two balances, at `charge` credits each."""
    return float((Decimal(before["balance"]) - Decimal(after["balance"])) / Decimal(charge))
