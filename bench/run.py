"""`make bench`: plain Envoy versus the metered path, side by side in one run.

Every gateway proxies the same POST /api/v1/chat/completions to the same fast upstream (an Envoy
direct_response, so no Python upstream skews the numbers). Rounds alternate between gateways
(A, B, C, A, B, C, ...) so background load hits them alike; the summary takes medians.
Per round and gateway: a warm-up, a throughput run at 8 connections (CPU per request of every
process from /proc deltas), and a latency run at 1 connection (p50/p99).

  .venv/bin/python bench/run.py            # ~3 minutes
  .venv/bin/python bench/run.py --quick    # ~30 seconds, one short round
  .venv/bin/python bench/run.py --stream   # the streaming benchmark instead (bench/stream.py)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gateways
import procs
import report
import wrk
from gateways import Gateway, Upstream

from critique_sidecar.devtools.stack import envoy_binary

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
THROUGHPUT_CONNS = 8
LATENCY_CONNS = 1
MIN_REQUESTS_PER_UPSTREAM_CONN = 100  # fewer means the upstream is closing connections
NOISY_OTHER_LOAD_CORES = 0.2  # CPU used by processes outside the bench while it measured


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round (~30 s): a smoke run, not figures to quote")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds of each 8-connection run (default 10, quick 4)")
    p.add_argument("--latency-duration", type=float, help="seconds of each 1-connection run (default 5, quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each round's runs (default 2, quick 1)")
    p.add_argument(
        "--gateways", default=",".join(gateways.GATEWAYS), help=f"comma-separated, from: {', '.join(gateways.GATEWAYS)}"
    )
    p.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also bench the metered path as it was at this commit (before/after in one run)",
    )
    p.add_argument("--out", type=Path, default=BENCH / "out", help="results.json, bench.png and process logs")
    args = p.parse_args()
    defaults = {"rounds": (3, 1), "duration": (10.0, 4.0), "latency_duration": (5.0, 3.0), "warmup": (2.0, 1.0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.gateways = [g.strip() for g in args.gateways.split(",") if g.strip()]
    if args.baseline:
        gateways.GATEWAYS["baseline"] = functools.partial(gateways.start_baseline, ref=args.baseline)
        args.gateways.insert(min(2, len(args.gateways)), "baseline")
    unknown = set(args.gateways) - set(gateways.GATEWAYS)
    if unknown:
        p.error(f"unknown gateway(s): {', '.join(sorted(unknown))}")
    return args


def ensure_tools() -> None:
    """Fail (or install) before minutes of measuring, not after."""
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing (`make bench` installs it: apt-get install wrk)")
    if importlib.util.find_spec("matplotlib") is None:
        print("bench: installing matplotlib into this virtualenv for the plot", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (all cores, every process) so far."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) * procs.CLOCK_TICK_S


def measure_round(gw: Gateway, upstream: Upstream, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    # Not measured: caches, pools and connections warm up (and the first round imports lazily).
    warm = wrk.run(gw.url, script, THROUGHPUT_CONNS, args.warmup)
    roles = {**gw.pids, "upstream": upstream.envoy.pid}
    cpu_before, busy_before = {r: procs.cpu_seconds(p) for r, p in roles.items()}, machine_busy_seconds()
    tp = wrk.run(gw.url, script, THROUGHPUT_CONNS, args.duration)
    cpu_after, busy_after = {r: procs.cpu_seconds(p) for r, p in roles.items()}, machine_busy_seconds()
    lat = wrk.run(gw.url, script, LATENCY_CONNS, args.latency_duration)

    cpu_s: dict[str, float] = {}
    for r in roles:  # several processes of one role ("sidecar", "sidecar2", ...) count together
        base = r.rstrip("0123456789")
        cpu_s[base] = cpu_s.get(base, 0.0) + cpu_after[r] - cpu_before[r]
    # CPU spent by neither the bench's processes nor wrk: other jobs on the machine (noise).
    other = (busy_after - busy_before) - sum(cpu_s.values()) - tp.wrk_cpu_s
    return {
        "rps": tp.rps,
        "requests": tp.requests,
        "p50_ms": lat.latency_ms["p50"],
        "p99_ms": lat.latency_ms["p99"],
        "throughput_latency_ms": tp.latency_ms,
        "latency_run": {"requests": lat.requests, "latency_ms": lat.latency_ms},
        "cpu_ms_per_req": {r: s * 1000 / max(tp.requests, 1) for r, s in cpu_s.items()},
        "wrk_cpu_ms_per_req": tp.wrk_cpu_s * 1000 / max(tp.requests, 1),
        "other_load_cores": max(other, 0.0) / tp.duration_s,
        "non_2xx": warm.non_2xx + tp.non_2xx + lat.non_2xx,
        "socket_errors": warm.socket_errors + tp.socket_errors + lat.socket_errors,
        "completed": warm.requests + tp.requests + lat.requests,
    }


def start_gateways(
    names: list[str], workdir: Path, upstream: Upstream, stack: contextlib.ExitStack
) -> dict[str, Gateway]:
    """Start each gateway and prove it answers; one that fails is reported and left out."""
    started: dict[str, Gateway] = {}
    for name in names:
        t0 = time.monotonic()
        try:
            gw = gateways.GATEWAYS[name](workdir, upstream)
        except Exception as exc:
            print(f"\n!!! bench: gateway {name!r} did not start: {exc}\n", flush=True)
            continue
        stack.callback(gw.stop)
        try:
            gw.checked_headers = gateways.check_one_request(gw)
        except Exception as exc:
            print(f"\n!!! bench: gateway {name!r} failed its sanity request: {exc}\n", flush=True)
            continue
        started[name] = gw
        print(
            f"bench: {gw.label} up in {time.monotonic() - t0:.1f}s at {gw.url} {gw.checked_headers or ''}", flush=True
        )
    return started


def machine_info() -> dict[str, Any]:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    envoy = (
        subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .split("version: ")[-1]
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "envoy": envoy,
        "commit": commit,
    }


def check_ledger(gw: Gateway, before: dict[str, str] | None, completed: int) -> dict[str, Any] | None:
    """Did the metered path charge every request it served (and not more)? Requests cut off when
    wrk stops may be charged without being counted as completed, so billed may exceed completed
    by up to the number of connections per run; open holds are requests still unsettled."""
    if before is None:
        return None
    after = gw.balance()
    charge = gw.checked_headers["x-critique-credits-charged"]
    billed = gateways.billed_requests(gw, before, after or {}, charge)
    return {
        "charge_per_request": charge,
        "completed": completed,
        "billed": billed,
        "open_holds": (after or {}).get("open_holds"),
    }


def main() -> int:
    if "--stream" in sys.argv[1:]:  # the streaming benchmark (bench/stream.py) has its own options
        import stream

        return stream.main(sys.argv[1:])
    args = parse_args()
    # Unwind (and so stop every process we started) on SIGTERM as on Ctrl-C: the children run in
    # their own sessions and would otherwise outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)  # generated only: logs and configs of this run
    out.mkdir(parents=True)
    per_round = len(args.gateways) * (args.warmup + args.duration + args.latency_duration)
    print(
        f"bench: {args.rounds} round(s) x {len(args.gateways)} gateway(s), about {args.rounds * per_round:.0f}s of load plus start-up",
        flush=True,
    )

    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "gateways": {},
    }
    results["settings"]["connections"] = {"throughput": THROUGHPUT_CONNS, "latency": LATENCY_CONNS}
    with contextlib.ExitStack() as stack:
        upstream = gateways.start_upstream(out)
        stack.callback(upstream.envoy.stop)
        started = start_gateways(args.gateways, out, upstream, stack)
        if not started:
            print("!!! bench: no gateway started; see the logs in", out)
            return 1
        scripts = {name: wrk.write_script(out / f"wrk-{name}.lua", gw.api_key) for name, gw in started.items()}
        balances = {name: gw.balance() for name, gw in started.items()}
        up_conns, up_reqs = (
            upstream.envoy.stat("http.fast_upstream.downstream_cx_total"),
            upstream.envoy.stat("http.fast_upstream.downstream_rq_total"),
        )

        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in started}
        for i in range(args.rounds):
            for name, gw in started.items():
                r = measure_round(gw, upstream, scripts[name], args)
                rounds[name].append(r)
                print(
                    f"bench: round {i + 1}/{args.rounds} {name:<11} {r['rps']:8,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}",
                    flush=True,
                )

        up_conns = upstream.envoy.stat("http.fast_upstream.downstream_cx_total") - up_conns
        up_reqs = upstream.envoy.stat("http.fast_upstream.downstream_rq_total") - up_reqs
        for name, gw in started.items():
            summary = report.summarize(rounds[name])
            results["gateways"][name] = {
                "name": name,
                "label": gw.label,
                "summary": summary,
                "rounds": rounds[name],
                "sidecar_memory": procs.memory_mb(gw.pids["sidecar"]) if "sidecar" in gw.pids else None,
                "ledger": check_ledger(gw, balances[name], sum(r["completed"] for r in rounds[name])),
            }
        results["upstream"] = {"connections_opened": up_conns, "requests": up_reqs}
    report.add_relative({n: g["summary"] for n, g in results["gateways"].items()})
    return finish(results, out, args.gateways)


def finish(results: dict[str, Any], out: Path, wanted: list[str]) -> int:
    """Print the table and every warning; write results.json and bench.png. Non-zero on problems."""
    problems = [f"gateway {n!r} did not run" for n in wanted if n not in results["gateways"]]
    for gw in results["gateways"].values():
        s = gw["summary"]
        if s["non_2xx"] or s["socket_errors"]:
            problems.append(f"{gw['name']}: {s['non_2xx']} non-2xx responses and {s['socket_errors']} socket errors")
        ledger = gw.get("ledger")
        # Each completed response was settled before it was sent, so billed >= completed; requests
        # in flight when a wrk run stops may be settled too (at most one per connection per run).
        in_flight = (2 * THROUGHPUT_CONNS + LATENCY_CONNS) * results["settings"]["rounds"]
        if ledger and not (ledger["completed"] <= ledger["billed"] <= ledger["completed"] + in_flight):
            problems.append(
                f"{gw['name']}: ledger charged {ledger['billed']:.1f} requests for {ledger['completed']} completed"
            )
    up = results["upstream"]
    if up["requests"] < MIN_REQUESTS_PER_UPSTREAM_CONN * max(up["connections_opened"], 1):
        problems.append(
            f"upstream opened {up['connections_opened']} connections for {up['requests']} requests: keep-alive is broken"
        )

    report.write_json(results, out / "results.json")
    report.plot(results, out / "bench.png")
    print("\n" + report.table(results))
    print(
        "\nCPU per request of the shared fast upstream (not the gateways'): "
        + ", ".join(
            f"{g['name']} {g['summary']['cpu_ms_per_req']['upstream']:.3f} ms" for g in results["gateways"].values()
        )
    )
    print(
        "Other load on the machine during the 8-connection runs (cores): "
        + ", ".join(f"{g['name']} {g['summary']['other_load_cores']:.2f}" for g in results["gateways"].values())
    )
    for g in results["gateways"].values():
        if g.get("ledger"):
            lg = g["ledger"]
            print(
                f"Ledger ({g['name']}): {lg['billed']:.0f} requests charged at {lg['charge_per_request']} credits for {lg['completed']} completed; open holds {lg['open_holds']}"
            )
    print(f"Upstream keep-alive: {up['requests']} requests over {up['connections_opened']} connections")
    lite = results["gateways"].get("litellm")
    if lite:
        print(
            "Throughput against LiteLLM's (same run): "
            + ", ".join(
                f"{g['name']} {g['summary']['rps'] / lite['summary']['rps']:.1f}x"
                for g in results["gateways"].values()
                if g["name"] not in ("litellm", "plain")
            )
        )
    noisy = [
        g["name"] for g in results["gateways"].values() if g["summary"]["other_load_cores"] > NOISY_OTHER_LOAD_CORES
    ]
    if noisy:
        print(f"Note: other jobs used the CPU during the runs of {', '.join(noisy)}: treat those figures as noisy")
    print(f"Wrote {out / 'results.json'} and {out / 'bench.png'}")
    if problems:
        print("\n!!! bench: PROBLEMS\n!!! " + "\n!!! ".join(problems), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
