"""A real Redis Cluster of three masters for the tests: three `redis-server --cluster-enabled
yes` processes on free ports, joined by `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from critique_sidecar.devtools.stack import free_port, redis_binary, wait_until


@contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[list[int]]:
    """Yields the masters' ports once the cluster reports cluster_state:ok."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is needed to form a Redis Cluster (Debian: redis-tools)")
    ports = [free_port() for _ in range(masters)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    # The bus port defaults to port + 10000, past 65535 for high free ports.
                    [
                        redis_binary(),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=open(node_dir / "redis.log", "wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        for port, proc in zip(ports, procs, strict=True):
            wait_until(lambda p=port: redis.Redis(port=p).ping(), f"cluster node {port}", proc=proc)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(
            lambda: all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in ports),  # type: ignore[no-untyped-call]
            "cluster_state:ok",
            timeout=30,
        )
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
