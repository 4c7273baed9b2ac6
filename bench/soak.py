"""`make soak`: resident memory per 100k requests, metered sidecar and floor side by side.

Both gateways take load at the same time (one wrk each, in chunks); after every chunk the
sidecar process's RSS and the requests served so far are recorded, and a least-squares line
through the samples after the warm-up (the first third) gives the growth per 100k requests. The floor is the
bare ext_proc servicer (bench/bare_ext_proc.py: same gRPC stack, no logic), so a slope both
share comes from below our code. Exits non-zero when the sidecar's slope exceeds --max-mb.

  .venv/bin/python bench/soak.py                     # ~4 minutes
  .venv/bin/python bench/soak.py --duration 60       # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gateways
import procs
import wrk
from gateways import Gateway

BENCH = Path(__file__).resolve().parent
CONNECTIONS = 4  # per gateway; both run at once on a small machine


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=240.0, help="seconds of load per gateway (default 240)")
    p.add_argument("--chunk", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument(
        "--warmup",
        type=float,
        default=1 / 3,
        help="fraction of the run left out of the fit: pools, caches and the allocator's arenas fill first (default 1/3)",
    )
    p.add_argument("--gateways", default="metered,floor", help="comma-separated, from: metered, floor")
    p.add_argument("--baseline", metavar="GIT_REF", help="also soak the metered sidecar as it was at this commit")
    p.add_argument(
        "--max-mb",
        type=float,
        default=8.0,
        help="fail when the sidecar grows more than this per 100k requests (default 8: before the fix, ~12)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the sidecar processes (e.g. LD_PRELOAD=..., for experiments)",
    )
    p.add_argument("--floor-handler", default=None, help="bare servicer handler variant (see bare_ext_proc.py)")
    p.add_argument("--floor-python", default=None, help="interpreter for the bare servicer (e.g. another grpcio)")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "soak")
    return p.parse_args()


def slope_mb_per_100k(samples: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of RSS (MB) over requests, scaled to 100k requests."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(r for r, _ in samples) / n
    my = sum(m for _, m in samples) / n
    sxx = sum((r - mx) ** 2 for r, _ in samples)
    if sxx == 0:
        return None
    sxy = sum((r - mx) * (m - my) for r, m in samples)
    return sxy / sxx * 100_000


def start(
    name: str, workdir: Path, upstream: gateways.Upstream, env: dict[str, str], args: argparse.Namespace
) -> Gateway:
    if name == "metered":
        return gateways._start_stack("metered", "metered sidecar", workdir, upstream, sidecar_env=env)
    if name == "baseline":
        return gateways.start_baseline(workdir, upstream, ref=args.baseline)
    if name == "floor":
        return gateways.start_bare(workdir, upstream, env=env, handler=args.floor_handler, python=args.floor_python)
    raise SystemExit(f"soak: unknown gateway {name!r}")


def soak(gw: Gateway, script: Path, args: argparse.Namespace, into: dict[str, Any]) -> None:
    pid = gw.pids["sidecar"]
    served, samples, errors = 0, [], 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.duration:
        r = wrk.run(gw.url, script, CONNECTIONS, args.chunk)  # raises (so no samples) if wrk fails
        served += r.requests
        errors += r.non_2xx + r.socket_errors
        samples.append({"t": round(time.monotonic() - t0, 1), "requests": served, **procs.memory_mb(pid)})
    into.update(samples=samples, requests=served, errors=errors)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = dict(kv.split("=", 1) for kv in args.env)
    names = [n.strip() for n in args.gateways.split(",") if n.strip()] + (["baseline"] if args.baseline else [])
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    with contextlib.ExitStack() as stack:
        upstream = gateways.start_upstream(args.out)
        stack.callback(upstream.envoy.stop)
        started = {}
        for name in names:
            gw = start(name, args.out, upstream, env, args)
            stack.callback(gw.stop)
            gw.checked_headers = gateways.check_one_request(gw)
            started[name] = gw
        print(f"soak: {', '.join(started)} for {args.duration:.0f}s each, at the same time", flush=True)
        threads = [
            threading.Thread(
                target=soak,
                args=(gw, wrk.write_script(args.out / f"wrk-{n}.lua", gw.api_key), args, results[n]),
            )
            for n, gw in started.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    fail = False
    for name, r in results.items():
        if "samples" not in r:
            print(f"!!! soak: {name}: load did not run (see the traceback above)")
            return 1
    print(f"\n{'process':<10} {'requests':>10} {'RSS start':>10} {'RSS end':>8}  MB per 100k requests")
    for name, r in results.items():
        fit = [(s["requests"], s["rss_mb"]) for s in r["samples"] if s["t"] > args.warmup * args.duration]
        r["mb_per_100k"] = slope_mb_per_100k(fit)
        first, last = r["samples"][0]["rss_mb"], r["samples"][-1]["rss_mb"]
        slope = "n/a" if r["mb_per_100k"] is None else f"{r['mb_per_100k']:.2f}"
        print(f"{name:<10} {r['requests']:>10,} {first:>10.1f} {last:>8.1f}  {slope}  (errors {r['errors']})")
        if name == "metered" and r["mb_per_100k"] is not None and r["mb_per_100k"] > args.max_mb:
            fail = True
        fail = fail or r["errors"] > 0
    (args.out / "soak.json").write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, **results}, indent=1)
    )
    print("(the machine may be shared: compare the two rows of one run, not runs with each other)")
    if fail:
        print(f"!!! soak: sidecar grew more than {args.max_mb} MB per 100k requests, or requests failed")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
