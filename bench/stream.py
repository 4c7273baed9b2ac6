"""The streaming benchmark: SSE completions chunk by chunk, every gateway in one run.

A paced SSE upstream of our own (bench/sse_upstream.py: a chunk every 10-30 ms by default, each
stamped with the time it was written) behind each gateway; a client process
(bench/sse_client.py) opens N concurrent streams and times every chunk. Per workload and
gateway, in alternating rounds (medians):

  - CPU per chunk of every process (/proc deltas over the run, divided by the chunks the client
    received; each stream's request and settlement are spread over its chunks),
  - added inter-chunk latency: p50/p99 of the gap the client saw minus the gap the upstream made,
    and the transit time of a chunk (p50/p99),
  - time to first token (request sent -> first content chunk),
  - memory per open stream (peak RSS during the run minus RSS before, over the streams open).

Workloads (the issue's table): 50 and 100 concurrent streams x 200 chunks at a mean 20 ms, and
one stream at a time with a chunk every 3 ms.

  .venv/bin/python bench/run.py --stream            # ~3 minutes
  .venv/bin/python bench/run.py --stream --quick    # ~40 seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gateways
import procs
import report
from gateways import Gateway

from critique_sidecar.devtools.stack import free_port, wait_until

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    concurrency: int
    streams: int
    chunks: int
    gap_us: int


WORKLOADS = {
    "c50": Workload("c50", "50 concurrent x 200 chunks, 20 ms", 50, 50, 200, 20000),
    "c100": Workload("c100", "100 concurrent x 200 chunks, 20 ms", 100, 100, 200, 20000),
    "serial": Workload("serial", "1 at a time x 1000 chunks, 3 ms", 1, 2, 1000, 3000),
}
QUICK_WORKLOADS = {
    "c100": Workload("c100", "100 concurrent x 100 chunks, 20 ms", 100, 100, 100, 20000),
    "serial": Workload("serial", "1 at a time x 1000 chunks, 3 ms", 1, 1, 1000, 3000),
}


@dataclass
class SseUpstream:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_sse_upstream(workdir: Path) -> SseUpstream:
    port = free_port()
    with open(workdir / "sse-upstream.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "sse_upstream.py"), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(
        lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, "sse upstream", proc=proc
    )
    return SseUpstream(proc, port)


# Rows: a gateway plus what the client sends. "metered+usage": the client asks for usage itself
# (stream_options.include_usage), so the sidecar has nothing to hide.
@dataclass(frozen=True)
class Row:
    name: str
    gateway: str
    include_usage: bool = False


def start_stream_floor(workdir: Path, upstream: Any) -> Gateway:
    return gateways.start_bare(
        workdir, upstream, name="floor", label="floor: bare servicer, STREAMED", extra_args=("--stream",)
    )


def _filters_with_ext_proc(node: Any) -> list[dict[str, Any]] | None:
    """The http_filters list that holds the ext_proc filter."""
    if isinstance(node, dict):
        filters = node.get("http_filters")
        if isinstance(filters, list) and any(f.get("name") == EXT_PROC for f in filters):
            return filters
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found = _filters_with_ext_proc(value)
            if found is not None:
                return found
    return None


EXT_PROC = "envoy.filters.http.ext_proc"


def _observe_body(config: dict[str, Any]) -> None:
    """The response body leaves the metering filter (it answers the request and response
    headers only) for a second ext_proc filter in observability mode: Envoy sends each chunk
    and does not wait for (or apply) a reply."""
    filters = _filters_with_ext_proc(config)
    assert filters is not None
    i = next(i for i, f in enumerate(filters) if f["name"] == EXT_PROC)
    filters[i]["typed_config"]["processing_mode"]["response_body_mode"] = "NONE"
    observer = copy.deepcopy(filters[i])
    observer["name"] = "critique.ext_proc.observe_body"
    observer["disabled"] = False
    typed = observer["typed_config"]
    typed["observability_mode"] = True
    typed["allow_mode_override"] = False
    typed["processing_mode"] = {
        "request_header_mode": "SKIP",
        "response_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_body_mode": "STREAMED",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    filters.insert(i + 1, observer)


def _no_body(config: dict[str, Any]) -> None:
    filters = _filters_with_ext_proc(config)
    assert filters is not None
    for f in filters:
        if f["name"] == EXT_PROC:
            f["typed_config"]["processing_mode"]["response_body_mode"] = "NONE"


def start_floor_observe(workdir: Path, upstream: Any) -> Gateway:
    return gateways.start_bare(
        workdir, upstream, name="floor-observe", label="floor: body to a 2nd ext_proc, observability mode",
        config_hook=_observe_body,
    )  # fmt: skip


def start_floor_headers(workdir: Path, upstream: Any) -> Gateway:
    return gateways.start_bare(
        workdir, upstream, name="floor-headers", label="floor: headers only, body not sent", config_hook=_no_body
    )


STREAM_GATEWAYS: dict[str, Callable[[Path, Any], Gateway]] = {
    "floor-observe": start_floor_observe,
    "floor-headers": start_floor_headers,
    "plain": gateways.start_plain,
    "metered": gateways.start_metered,
    "floor": start_stream_floor,
    "asgi": gateways.start_asgi,
}
ROWS = {
    "plain": Row("plain", "plain"),
    "metered": Row("metered", "metered"),
    "metered+usage": Row("metered+usage", "metered", include_usage=True),
    "floor": Row("floor", "floor"),
    "asgi": Row("asgi", "asgi"),
    "floor-observe": Row("floor-observe", "floor-observe"),
    "floor-headers": Row("floor-headers", "floor-headers"),
}
DEFAULT_ROWS = ("plain", "metered", "metered+usage", "floor", "floor-observe", "asgi")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)  # run.py's switch
    p.add_argument("--quick", action="store_true", help="short workloads, one round: a smoke run")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--workloads", help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    p.add_argument("--baseline", metavar="GIT_REF", help="also the metered path at this commit, same run")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "stream")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    table = QUICK_WORKLOADS if args.quick else WORKLOADS
    names = args.workloads.split(",") if args.workloads else list(table)
    args.workloads = [table.get(n) or WORKLOADS[n] for n in names]
    args.rows = [ROWS[r.strip()] for r in args.rows.split(",") if r.strip()]
    if args.baseline:
        STREAM_GATEWAYS["baseline"] = functools.partial(gateways.start_baseline, ref=args.baseline)
        ROWS["baseline"] = Row("baseline", "baseline")
        args.rows.insert(min(2, len(args.rows)), ROWS["baseline"])
    return args


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssPeak(threading.Thread):
    """The highest RSS of some processes while the client runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak = pids, dict.fromkeys(pids, 0)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            for role, pid in self.pids.items():
                self.peak[role] = max(self.peak[role], rss_kb(pid))


def client(gw: Gateway, wl: Workload, include_usage: bool, streams: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH / "sse_client.py"), "--url", gw.url, "--concurrency", str(wl.concurrency)]
    argv += ["--streams", str(streams or wl.streams), "--chunks", str(wl.chunks), "--gap-us", str(wl.gap_us)]
    if gw.api_key:
        argv += ["--key", gw.api_key]
    if include_usage:
        argv.append("--include-usage")
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def measure(gw: Gateway, row: Row, wl: Workload, upstream: SseUpstream) -> dict[str, Any]:
    # Not measured: as many short streams as the run opens, so pools hold their connections.
    client(gw, Workload(wl.name, "", wl.concurrency, wl.concurrency, 20, wl.gap_us), row.include_usage)
    roles = {**gw.pids, "upstream": upstream.pid}
    mem_roles = {r: p for r, p in gw.pids.items() if r in ("sidecar", "envoy")}
    rss_before = {r: rss_kb(p) for r, p in mem_roles.items()}
    before = {r: procs.cpu_seconds(p) for r, p in roles.items()}
    sampler = RssPeak(mem_roles)
    sampler.start()
    res = client(gw, wl, row.include_usage)
    sampler.stop_event.set()
    sampler.join()
    after = {r: procs.cpu_seconds(p) for r, p in roles.items()}
    chunks = max(res["chunks"], 1)
    cpu: dict[str, float] = {}
    for r in roles:
        base = r.rstrip("0123456789")
        cpu[base] = cpu.get(base, 0.0) + (after[r] - before[r]) * 1e6 / chunks
    res["cpu_us_per_chunk"] = cpu
    res["chunks_per_s"] = res["chunks"] / res["elapsed_s"]
    res["kb_per_open_stream"] = {
        r: (sampler.peak[r] - rss_before[r]) / wl.concurrency for r in mem_roles if wl.concurrency > 1
    }
    return res


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r) for r in rounds)

    out: dict[str, Any] = {
        "chunks_per_s": med(lambda r: r["chunks_per_s"]),
        "errors": sum(r["error_count"] for r in rounds),
        "charged_streams": sum(r["charged_streams"] for r in rounds),
        "completed": sum(r["completed"] for r in rounds),
        "usage_chunks_seen": sum(r["usage_chunks_seen"] for r in rounds),
    }
    for key in ("cpu_us_per_chunk", "kb_per_open_stream"):
        out[key] = {k: med(lambda r, k=k, key=key: r[key][k]) for k in rounds[0][key]}
    for key in ("ttft_ms", "transit_us", "added_gap_us"):
        out[key] = {q: med(lambda r, q=q, key=key: r[key][q]) for q in ("p50", "p99")}
    return out


def table(results: dict[str, Any]) -> str:
    header = [
        "workload",
        "gateway",
        "chunks/s",
        "sidecar us/chunk",
        "x floor",
        "Envoy us/chunk",
        "Redis us/chunk",
        "added gap p50/p99 us",
        "transit p50/p99 us",
        "TTFT p50/p99 ms",
        "KB/open stream (sidecar)",
        "errors",
    ]
    rows = [header]
    for wl_name, per_row in results["workloads"].items():
        floor = per_row.get("floor", {}).get("summary", {}).get("cpu_us_per_chunk", {}).get("sidecar")
        for name, r in per_row.items():
            s = r["summary"]
            cpu = s["cpu_us_per_chunk"]
            sc = cpu.get("sidecar")
            kb = s["kb_per_open_stream"].get("sidecar")
            rows.append([
                wl_name,
                name,
                f"{s['chunks_per_s']:,.0f}",
                "-" if sc is None else f"{sc:.1f}",
                "-" if sc is None or not floor else f"{sc / floor:.2f}",
                "-" if "envoy" not in cpu else f"{cpu['envoy']:.1f}",
                "-" if "redis" not in cpu else f"{cpu['redis']:.1f}",
                f"{s['added_gap_us']['p50']:.0f} / {s['added_gap_us']['p99']:.0f}",
                f"{s['transit_us']['p50']:.0f} / {s['transit_us']['p99']:.0f}",
                f"{s['ttft_ms']['p50']:.1f} / {s['ttft_ms']['p99']:.1f}",
                "-" if kb is None else f"{kb:.1f}",
                str(s["errors"]),
            ])  # fmt: skip
    return report.aligned(rows)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = list(results["workloads"])
    fig, axes = plt.subplots(2, len(wls), figsize=(6 * len(wls), 9), squeeze=False)
    for col, wl in enumerate(wls):
        per_row = results["workloads"][wl]
        names = list(per_row)
        x = range(len(names))
        ax = axes[0][col]
        bottom = [0.0] * len(names)
        for role in ("sidecar", "envoy", "redis", "upstream"):
            vals = [per_row[n]["summary"]["cpu_us_per_chunk"].get(role, 0.0) for n in names]
            ax.bar(x, vals, bottom=bottom, label="upstream (not the gateway's)" if role == "upstream" else role)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(f"CPU per chunk (us): {results['workload_labels'][wl]}", fontsize=9)
        ax.set_xticks(list(x), names, fontsize=8, rotation=30, ha="right")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        width = 0.38
        for offset, q in ((-width / 2, "p50"), (width / 2, "p99")):
            vals = [per_row[n]["summary"]["transit_us"][q] / 1000 for n in names]
            ax.bar([i + offset for i in x], vals, width, label=f"transit {q}")
        ax.set_yscale("log")  # plain Envoy is orders of magnitude below a loaded gateway
        ax.set_title("Chunk transit through the gateway (ms, log scale)", fontsize=9)
        ax.set_xticks(list(x), names, fontsize=8, rotation=30, ha="right")
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(
        f"critique-sidecar streaming bench: {m['cpus']} CPUs, {results['settings']['rounds']} round(s), medians"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sanity(gw: Gateway, row: Row) -> None:
    """One short stream before measuring: it must complete, and be charged in-band when metered."""
    res = client(gw, Workload("sanity", "", 1, 1, 5, 1000), row.include_usage)
    if res["completed"] != 1:
        raise RuntimeError(f"{row.name}: sanity stream failed: {res['errors']}")
    if gw.stack is not None and res["charged_streams"] != 1:
        raise RuntimeError(f"{row.name}: metered stream carried no charge line")
    if gw.stack is not None and res["usage_chunks_seen"] != (1 if row.include_usage else 0):
        raise RuntimeError(f"{row.name}: usage chunk shown {res['usage_chunks_seen']} times")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import run  # machine_info, ensure_tools

    run.ensure_tools()
    out = args.out
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results: dict[str, Any] = {
        "machine": run.machine_info(),
        "settings": {
            "rounds": args.rounds,
            "rows": [r.name for r in args.rows],
            "workloads": [vars(w) for w in args.workloads],
        },
        "workload_labels": {w.name: w.label for w in args.workloads},
        "workloads": {},
    }
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        upstream = start_sse_upstream(out)
        stack.callback(procs.stop_process, upstream.proc)
        started: dict[str, Gateway] = {}
        for row in args.rows:
            if row.gateway not in started:
                t0 = time.monotonic()
                try:
                    gw = STREAM_GATEWAYS[row.gateway](out, upstream)
                except Exception as exc:
                    problems.append(f"gateway {row.gateway} did not start: {exc}")
                    continue
                stack.callback(gw.stop)
                started[row.gateway] = gw
                print(f"stream bench: {gw.label} up in {time.monotonic() - t0:.1f}s", flush=True)
        rows = [r for r in args.rows if r.gateway in started]
        for row in list(rows):
            try:
                sanity(started[row.gateway], row)
            except Exception as exc:
                problems.append(str(exc))
                rows.remove(row)
        for wl in args.workloads:
            rounds: dict[str, list[dict[str, Any]]] = {r.name: [] for r in rows}
            for i in range(args.rounds):
                for row in rows:
                    r = measure(started[row.gateway], row, wl, upstream)
                    rounds[row.name].append(r)
                    cpu = r["cpu_us_per_chunk"]
                    print(
                        f"stream bench: {wl.name} round {i + 1}/{args.rounds} {row.name:<14} "
                        f"{r['chunks_per_s']:7,.0f} chunks/s  sidecar {cpu.get('sidecar', 0):6.1f} us  "
                        f"envoy {cpu.get('envoy', 0):6.1f} us  gap p99 {r['added_gap_us']['p99']:6.0f} us  "
                        f"errors {r['error_count']}",
                        flush=True,
                    )
            results["workloads"][wl.name] = {
                name: {"summary": summarize(rs), "rounds": rs} for name, rs in rounds.items()
            }
            for name, rs in rounds.items():
                errs = sum(r["error_count"] for r in rs)
                if errs:
                    problems.append(f"{wl.name}/{name}: {errs} streams failed, e.g. {rs[0]['errors'][:1]}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "stream.png")
    print("\n" + table(results))
    print(f"\nWrote {out / 'results.json'} and {out / 'stream.png'}")
    if problems:
        print("\n!!! stream bench: PROBLEMS\n!!! " + "\n!!! ".join(problems), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
