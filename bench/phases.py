"""What each ext_proc phase costs, in Envoy and in a servicer: the floor with 1 to 4 phases.

The repo's envoy.yaml, its ext_proc processing mode cut down to the first N phases (request
headers; + request body; + response headers; + response body), each answered by
bench/bare_ext_proc.py (constant replies, no logic, no Redis). Same upstream, wrk at 8
connections for throughput and CPU per request, 1 connection for latency, alternating rounds,
medians. The differences between rows are the marginal cost of one more phase.

  .venv/bin/python bench/phases.py            # ~2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import gateways
import procs
import wrk
import yaml
from critique_sidecar.devtools.stack import Stack, wait_until
from envoy_configs import MODEL

BENCH = Path(__file__).resolve().parent
PHASES = (
    ("request headers", {"request_header_mode": "SEND", "request_body_mode": "NONE", "response_header_mode": "SKIP", "response_body_mode": "NONE"}),
    ("+ request body", {"request_body_mode": "BUFFERED"}),
    ("+ response headers", {"response_header_mode": "SEND"}),
    ("+ response body", {"response_body_mode": "BUFFERED"}),
)


def with_mode(node: Any, mode: dict[str, str]) -> Any:
    """The config with every ext_proc filter's processing mode updated."""
    if isinstance(node, dict):
        if str(node.get("@type", "")).endswith("ext_proc.v3.ExternalProcessor"):
            node["processing_mode"].update(mode)
        for value in node.values():
            with_mode(value, mode)
    elif isinstance(node, list):
        for value in node:
            with_mode(value, mode)
    return node


def start(workdir: Path, upstream: gateways.Upstream, mode: dict[str, str], stack_: contextlib.ExitStack) -> tuple[str, dict[str, int]]:
    stack = Stack(workdir, ports={"upstream": upstream.port}, start_upstream=False)
    config = with_mode(yaml.safe_load(stack.envoy_yaml().read_text()), mode)
    listen = f"127.0.0.1:{stack.ports['grpc']}"
    argv = [sys.executable, str(BENCH / "bare_ext_proc.py"), "--listen", listen, "--model", MODEL, "--route-in-headers"]
    bare = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    stack_.callback(procs.stop_process, bare)
    wait_until(lambda: socket.create_connection(("127.0.0.1", stack.ports["grpc"]), timeout=1).close() is None, "bare ext_proc", proc=bare)
    envoy = procs.start_envoy("envoy", config, workdir, stack.ports["admin"])
    stack_.callback(envoy.stop)
    return f"http://127.0.0.1:{stack.ports['envoy']}{gateways.CHAT_PATH}", {"envoy": envoy.pid, "servicer": bare.pid}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "phases")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[float, float, float, float, int]]] = {}
    with contextlib.ExitStack() as stack:
        upstream = gateways.start_upstream(args.out)
        stack.callback(upstream.envoy.stop)
        mode: dict[str, str] = {}
        targets = {}
        for i, (name, change) in enumerate(PHASES):
            mode = {**mode, **change}
            targets[f"{i + 1}: {name}"] = start(args.out / f"phases-{i + 1}", upstream, mode, stack)
        script = wrk.write_script(args.out / "wrk.lua", None)
        for _ in range(args.rounds):
            for name, (url, pids) in targets.items():
                wrk.run(url, script, 8, 1)
                before = {role: procs.cpu_seconds(pid) for role, pid in pids.items()}
                run = wrk.run(url, script, 8, args.duration)
                cpu = {role: (procs.cpu_seconds(pid) - before[role]) * 1000 / max(run.requests, 1) for role, pid in pids.items()}
                lat = wrk.run(url, script, 1, args.duration / 2)
                rows.setdefault(name, []).append((run.rps, cpu["envoy"], cpu["servicer"], lat.latency_ms["p50"], run.non_2xx + lat.non_2xx))
    print("phases | req/s (8 conns) | Envoy CPU ms/req | servicer CPU ms/req | p50 ms (1 conn) | non-2xx")
    for name, rs in rows.items():
        med = [statistics.median(r[i] for r in rs) for i in range(4)]
        print(f"{name} | {med[0]:,.0f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.2f} | {sum(r[4] for r in rs)}")
    return 1 if any(r[4] for rs in rows.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
