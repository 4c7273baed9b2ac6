"""Processes the benchmark owns (Envoys it configures itself) and what /proc says about any process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from critique_sidecar.devtools.stack import envoy_binary, free_port, redis_binary, wait_until

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass
class EnvoyProcess:
    name: str
    proc: subprocess.Popen[bytes]
    admin_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stat(self, name: str) -> int:
        """One counter from the admin /stats endpoint (0 if absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter=^{name}$", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0

    def stop(self) -> None:
        stop_process(self.proc)


def start_envoy(
    name: str, config: dict[str, Any], workdir: Path, admin_port: int, concurrency: int = 2
) -> EnvoyProcess:
    """Start Envoy with `config` and wait until its admin endpoint says it is ready (LIVE)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with open(workdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        # --disable-hot-restart: several Envoys on one machine would otherwise fight over shared memory.
        argv = [
            envoy_binary(),
            "-c",
            str(path),
            "--log-level",
            "warn",
            "--concurrency",
            str(concurrency),
            "--disable-hot-restart",
        ]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    envoy = EnvoyProcess(name, proc, admin_port)
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{admin_port}/ready") == b"LIVE\n", name, proc=proc)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bytes(resp.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of all threads of `pid` so far (children not included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * CLOCK_TICK_S


def memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024  # kB -> MB
    return {"peak_rss_mb": out["VmHWM"], "rss_mb": out["VmRSS"]}


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A scratch redis-server on a free port (no persistence), stopped on exit; yields the port."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: redis.Redis(port=port).ping(), "redis", proc=server)
            yield port
        finally:
            server.terminate()
            server.wait()
