"""`make profile`: where the metered sidecar spends its CPU, under the benchmark's load.

Starts the same fast upstream and metered gateway as `make bench`, drives wrk at 8 connections
and samples the sidecar with py-spy (native frames included, so time in the event loop's and
grpc's C code shows up). Prints the functions with the most self time and the most inclusive
time, grouped by module, and writes the raw samples and a flame graph (SVG).

  .venv/bin/python bench/profile.py                    # 15 s of sampling
  .venv/bin/python bench/profile.py --gateway asgi     # the ASGI front door instead
  .venv/bin/python bench/profile.py --stream           # under 100 concurrent SSE streams instead
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import gateways
import wrk

BENCH = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", default="metered", choices=[g for g in gateways.GATEWAYS if g != "plain"])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--stream", action="store_true", help="streamed load: 100 concurrent paced SSE streams")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "profile")
    return p.parse_args()


def py_spy() -> str:
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    print("profile: installing py-spy into this virtualenv", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(Path(sys.executable).parent / "py-spy")


def record(pid: int, seconds: float, rate: int, out: Path, fmt: str) -> None:
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        f"{seconds:g}",
        "--rate",
        str(rate),
        "--native",
        "--format",
        fmt,
        "--output",
        str(out),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"py-spy failed: {done.stderr.strip()[-500:]}")


def frame_name(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'module.py:func'; native frames keep their symbol."""
    func, _, where = frame.partition(" (")
    if not where:
        return func
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{Path(path).name}:{func}"


def summarize(raw: Path, top: int) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        if any(idle in stack.rsplit(";", 1)[-1] for idle in _IDLE):
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        by_area[area(stack.split(";"))] += count
    lines = [
        f"{total} samples on a CPU (threads blocked in epoll/futex left out)",
        "",
        "by area (innermost frame that belongs to a known area):",
    ]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in by_area.most_common()]
    lines += ["", f"top {top} by self time:"] + [
        f"  {n / total:6.1%}  {name}" for name, n in self_time.most_common(top)
    ]
    lines += ["", f"top {top} by inclusive time:"] + [
        f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)
    ]
    return "\n".join(lines)


_IDLE = ("epoll_wait", "epoll_pwait", "poll (", "select (", "futex")  # blocked, not on a CPU

_AREAS = (  # first match from the innermost frame outwards
    ("critique_sidecar/store", "our store code (keys, args, results)"),
    ("critique_sidecar/observability", "metrics and request logs"),
    ("critique_sidecar/envoy", "our ext_proc translation (messages, headers)"),
    ("critique_sidecar/asgi", "our ASGI glue"),
    ("critique_sidecar/core", "our core logic (parse, price, meter)"),
    ("(redis/", "redis-py"),
    ("(grpc/", "grpc (Python and Cython)"),
    ("(google/protobuf", "protobuf"),
    ("(logging/", "stdlib logging"),
    ("hiredis", "redis-py"),
    ("cygrpc", "grpc (Python and Cython)"),
    ("_message.", "protobuf"),
    ("orjson", "our core logic (parse, price, meter)"),
    ("_asynciomodule.c", "asyncio (tasks, futures)"),
    ("(asyncio/", "asyncio (tasks, futures)"),
    ("loop.c", "uvloop (event loop, sockets)"),
)


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in _AREAS:
            if marker in frame:
                return name
    return "other"


def profile_stream(args: argparse.Namespace, out: Path) -> None:
    """py-spy on the sidecar while 100 concurrent streams (a chunk every ~20 ms) pass through it."""
    import stream

    with contextlib.ExitStack() as stack:
        upstream = stream.start_sse_upstream(out)
        stack.callback(stream.procs.stop_process, upstream.proc)
        gw = stream.STREAM_GATEWAYS[args.gateway](out, upstream)
        stack.callback(gw.stop)
        wl = stream.WORKLOADS["c100"]
        chunks = int((args.seconds + 4) * 1e6 / wl.gap_us)
        for seconds, path, fmt in ((args.seconds, "samples.txt", "raw"), (4, "flame.svg", "flamegraph")):
            load_wl = stream.Workload("profile", "", wl.concurrency, wl.streams, chunks, wl.gap_us)
            load = threading.Thread(target=stream.client, args=(gw, load_wl, False))
            load.start()
            record(gw.pids["sidecar"], seconds, args.rate, out / path, fmt)
            load.join()


def main() -> int:
    args = parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if args.stream:
        profile_stream(args, out)
        report = summarize(out / "samples.txt", args.top)
        (out / "summary.txt").write_text(report + "\n")
        print(report)
        return 0
    with contextlib.ExitStack() as stack:
        upstream = gateways.start_upstream(out)
        stack.callback(upstream.envoy.stop)
        gw = gateways.GATEWAYS[args.gateway](out, upstream)
        stack.callback(gw.stop)
        gateways.check_one_request(gw)
        script = wrk.write_script(out / "wrk.lua", gw.api_key)
        wrk.run(gw.url, script, 8, 2)  # warm caches and connections
        load = threading.Thread(target=wrk.run, args=(gw.url, script, 8, args.seconds + 4))
        load.start()
        pid = gw.pids["sidecar"]
        record(pid, args.seconds, args.rate, out / "samples.txt", "raw")
        load.join()
        load = threading.Thread(target=wrk.run, args=(gw.url, script, 8, 6))
        load.start()
        record(pid, 4, args.rate, out / "flame.svg", "flamegraph")
        load.join()
    report = summarize(out / "samples.txt", args.top)
    (out / "summary.txt").write_text(report + "\n")
    print(report)
    print(f"\nWrote {out / 'summary.txt'}, {out / 'samples.txt'} and {out / 'flame.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
