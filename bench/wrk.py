"""Drive wrk with the benchmark's chat request and read its results as JSON.

The Lua script sets a static method, body and headers and defines no request()/response()
callbacks, so wrk keeps sending one pre-built request (the fast path). Its done() callback
prints exact counters and percentiles as one JSON line instead of wrk's rounded text."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from envoy_configs import MODEL

REQUEST_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Summarize this retry policy in three bullets."}],
    "max_tokens": 64,
}

RESULT_MARK = "WRK_RESULT "

_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"mean_us":%f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for this ASCII text


def write_script(path: Path, api_key: str | None) -> Path:
    auth = f'wrk.headers["Authorization"] = {_lua_string("Bearer " + api_key)}' if api_key else ""
    body = json.dumps(REQUEST_BODY, separators=(",", ":"))
    path.write_text(_SCRIPT.format(body=_lua_string(body), auth=auth, mark=RESULT_MARK))
    return path


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int  # wrk counts responses with status >= 400
    socket_errors: int
    latency_ms: dict[str, float]
    wrk_cpu_s: float
    raw: dict[str, float] = field(repr=False, default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def run(url: str, script: Path, connections: int, duration_s: float, threads: int | None = None) -> WrkResult:
    threads = threads or min(connections, 2)
    argv = [
        "wrk",
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration_s:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    # wrk is our only child that exits during the run, so the RUSAGE_CHILDREN delta is its CPU.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_MARK)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(line[len(RESULT_MARK) :])
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        non_2xx=raw["non_2xx"],
        socket_errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
        latency_ms={p: raw[f"{p}_us"] / 1000 for p in ("p50", "p90", "p99", "p999")},
        wrk_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        raw=raw,
    )
