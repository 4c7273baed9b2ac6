"""Day two: what the sidecar process writes, start to stop, in json log mode (the default).

Every line is one JSON object, gRPC core's own lines included (GRPC_VERBOSITY=info makes it
write some), through start, serving, losing Redis and stopping; the revocation feed's warning
comes once per outage, not once per retry; a settled line carries Envoy's x-request-id (the id
the model server saw) as `trace_id`. Starting on a taken port is one line, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from critique_sidecar.devtools.stack import Stack, wait_until

from .helpers import client, funded_key


@pytest.fixture
def lone_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "stack", sidecar_env={"GRPC_VERBOSITY": "info", "CRITIQUE_LOG_FORMAT": "json"})
    try:
        yield stack.start()
    finally:
        stack.stop()


def lines(stack: Stack) -> list[str]:
    return (stack.workdir / "sidecar.log").read_text().splitlines()


def parsed(stack: Stack) -> list[dict[str, Any]]:
    out = []
    for line in lines(stack):
        obj = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= obj.keys(), line
        out.append(obj)
    return out


def test_every_line_from_start_to_stop_is_json(lone_stack: Stack, account: str) -> None:
    stack = lone_stack
    key = funded_key(stack, account, "5")
    raw = client(stack, key).chat.completions.with_raw_response.create(
        model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    assert raw.http_response.status_code == 200
    seen = httpx.get(f"http://127.0.0.1:{stack.ports['upstream']}/_fake/requests", timeout=5).json()
    envoy_id = seen[-1]["headers"]["x-request-id"]
    wait_until(lambda: any(o.get("event") == "settled" for o in parsed(stack)), "settled line")
    [settled] = [o for o in parsed(stack) if o.get("event") == "settled"]
    assert settled["trace_id"] == envoy_id and settled["request_id"] == raw.headers["x-critique-request-id"]

    stack.stop("redis")  # Redis lost: health, the revocation feed and retention notice
    with refusing_redis(stack.ports["redis"]) as attempts:
        wait_until(lambda: any("NOT_SERVING" in o["msg"] for o in parsed(stack)), "store unreachable logged")
        # Every retry (the feed's, once a second; the health check's) connects and is cut off.
        wait_until(lambda: len(attempts) >= 8, "several reconnection attempts", timeout=30)
        stack.stop("sidecar")
    feed = "revocation feed interrupted"

    objs = parsed(stack)
    assert sum(feed in o["msg"] for o in objs) == 1
    assert any(o["logger"] == "grpc" for o in objs)  # gRPC core's own lines, as JSON
    assert objs[-1]["msg"] == "stopped"


@contextmanager
def refusing_redis(port: int) -> Iterator[list[float]]:
    """Where Redis was: accepts each connection and closes it at once, counting them."""
    attempts: list[float] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            attempts.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield attempts
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()


def test_a_taken_port_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "CRITIQUE_GRPC_LISTEN": f"127.0.0.1:{port}", "CRITIQUE_REDIS_URL": "redis://127.0.0.1:1/0"}
        env["CRITIQUE_JOURNAL_PATH"] = str(tmp_path / "journal")
        out = subprocess.run(
            [sys.executable, "-m", "critique_sidecar.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"CRITIQUE_GRPC_LISTEN 127.0.0.1:{port} is in use by another process" in out.stderr


def test_a_configuration_error_names_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "CRITIQUE_HOLD_TTL_S": "60", "CRITIQUE_REDIS_TIMEOUT_S": "-1"}
    out = subprocess.run(
        [sys.executable, "-m", "critique_sidecar.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "CRITIQUE_REDIS_TIMEOUT_S: Input should be greater than 0" in out.stderr
    assert "hold_ttl_s" not in out.stderr and "redis_timeout_s" not in out.stderr
