"""`make bench-scaling`: does throughput grow with sidecar processes when CPU is there for them?

On a 2-core machine the bench's load generator, Envoy, Redis and the upstream already share the
cores with the sidecar, so a second sidecar process has no idle core to use. This script makes
the question answerable anyway: every sidecar process gets its own CPU budget (a cgroup CPU
quota, default 0.3 of a core), so adding a process adds CPU that nothing else competes for.
If Envoy spreads its ext_proc streams over the processes and they share nothing but Redis,
throughput grows with the number of processes until the machine itself runs out.

Needs root and the cgroup CPU controller (v1 `cpu` or v2 `cpu.max`).

  .venv/bin/python bench/scaling.py                       # 1, 2, 3 processes at 0.3 CPU each
  .venv/bin/python bench/scaling.py --quota 0.25 --max-procs 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import gateways
import procs
import wrk

BENCH = Path(__file__).resolve().parent
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuBudget:
    """A cgroup with a CPU quota; processes moved into it share that much CPU at most."""

    def __init__(self, name: str, cores: float) -> None:
        quota = int(cores * PERIOD_US)
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            self.path = CGROUP_V1 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            self.procs_file = self.path / "cgroup.procs"
        elif (CGROUP_V2 / "cgroup.controllers").exists() and "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text():
            self.path = CGROUP_V2 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            self.procs_file = self.path / "cgroup.procs"
        else:
            raise RuntimeError("no cgroup CPU controller here (need /sys/fs/cgroup/cpu or cgroup v2 with cpu)")

    def add(self, pid: int) -> None:
        self.procs_file.write_text(str(pid))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only once its processes have exited


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quota", type=float, default=0.3, help="CPU (in cores) each sidecar process may use")
    p.add_argument("--max-procs", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "scaling")
    return p.parse_args()


def measure(n: int, args: argparse.Namespace, upstream: gateways.Upstream) -> dict[str, Any]:
    budgets: list[CpuBudget] = []
    gw = gateways._start_stack(f"scaling-{n}", f"{n} sidecar process(es)", args.out, upstream, sidecars=n)
    try:
        sidecars = {role: pid for role, pid in gw.pids.items() if role.startswith("sidecar")}
        for i, pid in enumerate(sidecars.values()):
            budget = CpuBudget(f"critique-bench-sidecar-{os.getpid()}-{n}-{i}", args.quota)
            budget.add(pid)
            budgets.append(budget)
        gateways.check_one_request(gw)
        script = wrk.write_script(args.out / f"wrk-{n}.lua", gw.api_key)
        wrk.run(gw.url, script, args.connections, 2)  # warm-up
        before = {role: procs.cpu_seconds(pid) for role, pid in sidecars.items()}
        run = wrk.run(gw.url, script, args.connections, args.duration)
        used = {role: (procs.cpu_seconds(pid) - before[role]) / run.duration_s for role, pid in sidecars.items()}
        return {
            "processes": n,
            "rps": run.rps,
            "p50_ms": run.latency_ms["p50"],
            "p99_ms": run.latency_ms["p99"],
            "cores_used_per_process": used,
            "non_2xx": run.non_2xx,
        }
    finally:
        gw.stop()
        for budget in budgets:
            budget.remove()


def main() -> int:
    args = parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    try:
        CpuBudget(f"critique-bench-probe-{os.getpid()}", args.quota).remove()
    except (RuntimeError, OSError) as exc:
        print(f"bench/scaling.py: cannot set CPU budgets here: {exc}", file=sys.stderr)
        return 2
    results = []
    with contextlib.ExitStack() as stack:
        upstream = gateways.start_upstream(args.out)
        stack.callback(upstream.envoy.stop)
        for n in range(1, args.max_procs + 1):
            r = measure(n, args, upstream)
            results.append(r)
            per = ", ".join(f"{v:.2f}" for v in r["cores_used_per_process"].values())
            print(
                f"scaling: {n} process(es) at <= {args.quota:g} CPU each: {r['rps']:7,.0f} req/s  p50 {r['p50_ms']:.2f} ms  cores used per process: {per}  non-2xx {r['non_2xx']}",
                flush=True,
            )
    base = results[0]["rps"]
    print("\nprocesses | req/s | vs one process")
    for r in results:
        print(f"{r['processes']:9} | {r['rps']:5,.0f} | {r['rps'] / base:.2f}x")
    (args.out / "results.json").write_text(
        json.dumps({"quota_cores": args.quota, "cpus": os.cpu_count(), "results": results}, indent=2)
    )
    return 1 if any(r["non_2xx"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
