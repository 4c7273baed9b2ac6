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
import statistics
import sys
from pathlib import Path

import gateways
import procs
import wrk

BENCH = Path(__file__).resolve().parent
PHASES = (
    (
        "request headers",
        {
            "request_header_mode": "SEND",
            "request_body_mode": "NONE",
            "response_header_mode": "SKIP",
            "response_body_mode": "NONE",
        },
    ),
    ("+ request body", {"request_body_mode": "BUFFERED"}),
    ("+ response headers", {"response_header_mode": "SEND"}),
    ("+ response body", {"response_body_mode": "BUFFERED"}),
)


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
        targets: dict[str, gateways.Gateway] = {}
        for i, (name, change) in enumerate(PHASES):
            mode = {**mode, **change}
            gw = gateways.start_bare(
                args.out, upstream, f"phases-{i + 1}", name, processing_mode=mode, route_in_headers=True
            )
            stack.callback(gw.stop)
            targets[f"{i + 1}: {name}"] = gw
        script = wrk.write_script(args.out / "wrk.lua", None)
        for _ in range(args.rounds):
            for name, gw in targets.items():
                wrk.run(gw.url, script, 8, 1)
                before = {role: procs.cpu_seconds(pid) for role, pid in gw.pids.items()}
                run = wrk.run(gw.url, script, 8, args.duration)
                cpu = {
                    role: (procs.cpu_seconds(pid) - before[role]) * 1000 / max(run.requests, 1)
                    for role, pid in gw.pids.items()
                }
                lat = wrk.run(gw.url, script, 1, max(1, round(args.duration / 2)))  # wrk takes whole seconds
                rows.setdefault(name, []).append(
                    (run.rps, cpu["envoy"], cpu["sidecar"], lat.latency_ms["p50"], run.non_2xx + lat.non_2xx)
                )
    print("phases | req/s (8 conns) | Envoy CPU ms/req | servicer CPU ms/req | p50 ms (1 conn) | non-2xx")
    for name, rs in rows.items():
        med = [statistics.median(r[i] for r in rs) for i in range(4)]
        print(f"{name} | {med[0]:,.0f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.2f} | {sum(r[4] for r in rs)}")
    return 1 if any(r[4] for rs in rows.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
