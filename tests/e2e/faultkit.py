"""Helpers for the fault-injection tests: a private stack per test (its own persistent Redis,
so a Redis killed and restarted on the same port keeps its data), the ledger as Redis holds
it, the journal as the sidecar wrote it, and gRPC health straight from the sidecar port."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.store import keyspace as ks

MODEL = "deepseek/deepseek-v4-flash"
CHAT_PATH = "/api/v1/chat/completions"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextmanager
def fault_stack(workdir: Path, **options: Any) -> Iterator[Stack]:
    """A whole stack of this test's own, with a persistent Redis; always torn down (a frozen
    process is thawed first so it can exit)."""
    stack = Stack(workdir, persist_redis=True, **options)
    try:
        stack.start()
        yield stack
    finally:
        for proc in stack.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        stack.stop(timeout=45)


def body(content: str = "hello", stream: bool = False, max_tokens: int = 20, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    if stream:
        out["stream"] = True
    out.update(extra)
    return out


def post(
    stack: Stack, key: str, payload: Any, timeout: float = 60, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, float]:
    """POST a chat request; returns the response and how long it took (seconds)."""
    h = {"authorization": f"Bearer {key}", **(headers or {})}
    start = time.monotonic()
    if isinstance(payload, (bytes, str)):
        r = httpx.post(
            stack.base_url + CHAT_PATH,
            content=payload,
            headers={"content-type": "application/json", **h},
            timeout=timeout,
        )
    else:
        r = httpx.post(stack.base_url + CHAT_PATH, json=payload, headers=h, timeout=timeout)
    return r, time.monotonic() - start


class Background:
    """One request running on a thread, so the test can break things while it is in flight."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def get(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background request did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def stream_text(stack: Stack, key: str, payload: dict[str, Any], timeout: float = 60) -> tuple[int, str]:
    """A streamed request read to its end (or to the point the connection dies)."""
    text = []
    with httpx.stream(
        "POST", stack.base_url + CHAT_PATH, json=payload, headers={"authorization": f"Bearer {key}"}, timeout=timeout
    ) as r:
        try:
            for chunk in r.iter_text():
                text.append(chunk)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            text.append("<<connection cut>>")
        return r.status_code, "".join(text)


# -- what the fake upstream saw ---------------------------------------------------------


def upstream_requests(stack: Stack) -> list[dict[str, Any]]:
    """The fake model server's last 200 requests, oldest first, each with its number `n`."""
    return httpx.get(f"http://127.0.0.1:{stack.ports['upstream']}/_fake/requests", timeout=10).json()  # type: ignore[no-any-return]


def upstream_count(stack: Stack) -> int:
    """How many requests the fake model server has received in all (not capped like the list)."""
    seen = upstream_requests(stack)
    return int(seen[-1]["n"]) if seen else 0


def upstream_saw(stack: Stack, marker: str) -> bool:
    """Has the upstream received a request whose last message contains `marker`?"""
    return any(marker in json.dumps(r["body"].get("messages", [])) for r in upstream_requests(stack))


# -- the ledger as Redis holds it ---------------------------------------------------------


@dataclass
class Ledger:
    balance: int
    held: int
    holds: int  # open holds (entries in the holds hash)
    records: list[dict[str, str]]

    @property
    def charged(self) -> int:
        return sum(int(r["credits"]) for r in self.records)

    def request_ids(self) -> list[str]:
        return [r["request_id"] for r in self.records]


def on_cluster(stack: Stack) -> bool:
    return stack.sidecar_env.get("CRITIQUE_REDIS_CLUSTER", "").lower() in ("1", "true", "yes")


def sync_redis(stack: Stack, **kwargs: Any) -> Any:
    """A client for the stack's store: the Redis, or the Redis Cluster, its sidecars use."""
    if on_cluster(stack):
        return redis.RedisCluster.from_url(str(stack.redis_url), socket_timeout=5, **kwargs)
    return redis.Redis.from_url(str(stack.redis_url), socket_timeout=5, **kwargs)


def ledger(stack: Stack, account: str) -> Ledger:
    with sync_redis(stack, decode_responses=True) as r:
        balance, held = r.hmget(ks.account(account), "balance", "held")
        return Ledger(
            int(balance or 0),
            int(held or 0),
            r.hlen(ks.holds(account)),
            [fields for _, fields in r.xrange(ks.usage_stream(account))],
        )


def redis_up(stack: Stack) -> bool:
    try:
        with redis.Redis.from_url(str(stack.redis_url), socket_timeout=1) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


def restart_redis(stack: Stack) -> None:
    if "redis" in stack.procs and stack.procs["redis"].poll() is None:
        stack.stop("redis", signal.SIGKILL)
    stack.start_redis()


# -- the journal as the sidecar wrote it --------------------------------------------------


def journal_path(stack: Stack, index: int = 0) -> Path:
    return Path(stack.sidecar_environ(index)["CRITIQUE_JOURNAL_PATH"])


def journal(stack: Stack, index: int = 0) -> list[dict[str, Any]]:
    path = journal_path(stack, index)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# -- gRPC health straight from a sidecar -------------------------------------------------


def grpc_port(stack: Stack, index: int = 0) -> int:
    return stack.ports["grpc"] if index == 0 else stack.ports[f"grpc{index}"]


def health(stack: Stack, index: int = 0, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(stack, index)}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)


def wait_health(stack: Stack, status: int, timeout: float = 20, index: int = 0) -> float:
    """Poll the sidecar's health until it reports `status`; returns the seconds it took."""
    start = time.monotonic()
    wait_until(
        lambda: health(stack, index) == status,
        f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}",
        timeout=timeout,
    )
    return time.monotonic() - start


def restart_sidecar(stack: Stack, index: int = 0) -> None:
    """Start a sidecar again and wait until Envoy routes to it (its health check passed)."""
    stack.start_sidecar(index)
    wait_until(lambda: health(stack, index) == SERVING, "sidecar SERVING", timeout=30)
    wait_until(stack.envoy_ready, "envoy sees the sidecar healthy", timeout=30)


def funded(stack: Stack, account: str, credits: str = "10") -> str:
    """A new key for `account` and `credits` granted, as `keys create` and `credits grant` do
    (in process: a CLI run costs a second of interpreter start-up)."""
    import asyncio

    import redis.asyncio as aioredis

    from critique_sidecar.core.money import parse_credits
    from critique_sidecar.store.accounts import RedisAccounts
    from critique_sidecar.store.key_store import RedisKeyStore

    async def create() -> str:
        r = (
            aioredis.RedisCluster.from_url(str(stack.redis_url))
            if on_cluster(stack)
            else aioredis.Redis.from_url(str(stack.redis_url))
        )
        try:
            key, _ = await RedisKeyStore(r).create(account, ("read:inference", "write:inference"))
            if parse_credits(credits):
                await RedisAccounts(r).grant(account, parse_credits(credits))
            return key
        finally:
            await r.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(create())
    # Called from an async test: run it on a loop of its own, on another thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(create())).result()
