"""`make run` (devtools/stack.py main): a taken port is one clear line, a signal at any moment
of start-up stops every process started so far, and the operator CLI run beside the stack uses
the stack's Redis (never another one)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from critique_sidecar.devtools import stack_file
from critique_sidecar.devtools.stack import DEFAULT_PORTS, Stack, banner, free_port, wait_until

RUN = [sys.executable, "-m", "critique_sidecar.devtools.stack"]


def run_env(tmp_path: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRITIQUE_") or k == "CRITIQUE_ENVOY_BIN"}
    env["CRITIQUE_RUN_DIR"] = str(tmp_path / ".run")
    for name in DEFAULT_PORTS:
        env[f"CRITIQUE_RUN_{name.upper()}_PORT"] = str(ports.get(name) or free_port())
    return env


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("name", ["envoy", "redis"])  # redis: what a second `make run` runs into
def test_a_taken_port_is_one_line_naming_it_and_its_override(tmp_path: Path, held_port: int, name: str) -> None:
    out = subprocess.run(RUN, env=run_env(tmp_path, **{name: held_port}), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr
    assert f"port {held_port} ({name})" in lines[0] and f"CRITIQUE_RUN_{name.upper()}_PORT" in lines[0]


@pytest.mark.parametrize("after", [1, 2, 3])  # SIGTERM once that many processes are up (or starting)
def test_sigterm_during_start_up_leaves_no_process_behind(tmp_path: Path, after: int) -> None:
    proc = subprocess.Popen(RUN, env=run_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    seen: set[int] = set()

    def started() -> bool:
        seen.update(children(proc.pid))
        return len(seen) >= after

    try:
        wait_until(started, f"{after} processes started", timeout=60, proc=proc)
        os.killpg(proc.pid, signal.SIGTERM)  # as a terminal or supervisor signals the group
        rc = proc.wait(timeout=60)
        assert rc == 0, (rc, proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen and not [pid for pid in seen if alive(pid)]
    assert not (tmp_path / ".run" / stack_file.NAME).exists()


def test_the_banner_says_how_to_point_the_cli_at_the_stack(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports={"redis": 6399})
    text = banner(stack, {"key_id": "key_x", "key": "crt_x"}, "crtop_x")
    assert "CRITIQUE_REDIS_URL=redis://127.0.0.1:6399/0" in text and "stack.json" in text
    assert "Bearer crtop_x" in text  # the provisioning API's curl line carries the operator token


def test_the_cli_beside_the_stack_uses_its_redis_and_sigterm_stops_it_all(tmp_path: Path) -> None:
    env = run_env(tmp_path)
    proc = subprocess.Popen(RUN, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    found = tmp_path / ".run" / stack_file.NAME
    seen: set[int] = set()
    try:

        def up() -> bool:
            seen.update(children(proc.pid))
            return found.exists()

        wait_until(up, "the local stack", timeout=90, proc=proc)
        # From (below) the directory `make run` ran in, with no CRITIQUE_REDIS_URL:
        below = tmp_path / "sub"
        below.mkdir()
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("CRITIQUE_")}
        show = [sys.executable, "-m", "critique_sidecar.cli", "credits", "show", "--account", "demo", "--json"]
        out = subprocess.run(show, env=cli_env, cwd=below, capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(out.stdout)["balance"] == "100.000000"  # the demo grant: the stack's Redis
        assert f"127.0.0.1:{env['CRITIQUE_RUN_REDIS_PORT']}" in out.stderr and ".run/stack.json" in out.stderr
        # Every command that talks to Redis: a token made here works on the stack's own API.
        cli = [sys.executable, "-m", "critique_sidecar.cli"]
        made = subprocess.run([*cli, "operator-tokens", "create", "--name", "t", "--scopes", "all", "--json"],
                              env=cli_env, cwd=below, capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert ".run/stack.json" in made.stderr
        token = json.loads(made.stdout)["token"]
        provision = f"http://127.0.0.1:{env['CRITIQUE_RUN_PROVISION_PORT']}/v1/accounts/demo/credits"
        assert httpx.get(provision, headers={"authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        dead = subprocess.run([*cli, "notify", "dead-letters", "--json"],
                              env=cli_env, cwd=below, capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert ".run/stack.json" in dead.stderr
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(seen) >= 5 and not [pid for pid in seen if alive(pid)]  # redis, upstream, sidecar, envoy, gateway
    assert not found.exists()


def test_a_stack_file_of_a_stopped_stack_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / ".run"
    run.mkdir()
    (run / stack_file.NAME).write_text(json.dumps({"pid": gone.pid, "redis_url": "redis://127.0.0.1:1/0"}))
    assert stack_file.running_stack(tmp_path) is None
    (run / stack_file.NAME).write_text(json.dumps({"pid": os.getpid(), "redis_url": "redis://127.0.0.1:1/0"}))
    assert stack_file.running_stack(tmp_path / "deeper")["redis_url"] == "redis://127.0.0.1:1/0"
