"""LiteLLM's proxy as a model server nobody here wrote, for the tests and the benchmark.

It serves the OpenAI API under `/v1/...` as vLLM, SGLang and hosted providers do, answers only
its master key, and with `mock_response` in a model's parameters answers without any model (so
it needs no network). `make install` puts it in a virtualenv of its own (`.venv-litellm`: its
pins would fight ours), with `prisma` beside it: without that module LiteLLM answers a request
that has no key with a 500 instead of its 401 (its error handler imports it)."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .stack import REPO, free_port, wait_until

VERSION = "1.108.7"
VENV = REPO / ".venv-litellm"


def binary() -> Path:
    exe = VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"no LiteLLM proxy in {VENV}: run `make install` (installs litellm[proxy]=={VERSION})")
    return exe


@dataclass
class LiteLLM:
    port: int
    master_key: str
    proc: subprocess.Popen[bytes]
    scheme: str = "http"
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(
    workdir: Path,
    models: list[dict[str, Any]],
    tls: tuple[Path, Path] | None = None,
    host: str = "127.0.0.1",
) -> LiteLLM:
    """LiteLLM's proxy (one worker, no database, its master key the only key) serving `models`
    (LiteLLM's model_list entries); over TLS with `tls` = (certificate chain, private key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    master_key = "sk-litellm-" + secrets.token_hex(16)  # it refuses to start without one
    config = {"model_list": models, "general_settings": {"master_key": master_key}}
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [str(binary()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    if tls is not None:
        argv += ["--ssl_certfile_path", str(tls[0]), "--ssl_keyfile_path", str(tls[1])]
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    with open(workdir / "litellm.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = LiteLLM(port, master_key, proc, "https" if tls else "http", host)
    try:
        wait_until(lambda: _live(port, tls is not None), "litellm", timeout=120, proc=proc)
    except BaseException:
        server.stop()
        raise
    return server


def _live(port: int, tls: bool) -> bool:
    if tls:  # the listener is up once it takes a connection (the CA is the test's own)
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    return bool(urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status == 200)
