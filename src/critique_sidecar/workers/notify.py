"""The budget-notification delivery worker: outbox events -> signed webhook POSTs.

Never on the request path: it runs as `critique-sidecar notify-worker`, or as a background
task of `serve` / `gateway` with CRITIQUE_NOTIFY_WORKER=true. Any number may run at once (one
consumer group: each event goes to one worker). Each event is retried with exponential
backoff (CRITIQUE_NOTIFY_BACKOFF_S, doubling, capped at 300 s) up to
CRITIQUE_NOTIFY_MAX_ATTEMPTS, then goes to the dead-letter list
(`critique-sidecar notify dead-letters`). Other events are not held up by one that fails.

Each connection goes to an address checked when it is made: the webhook's host name is
resolved, every address must be public or in CRITIQUE_NOTIFY_ALLOWED_NETWORKS, and the socket
connects to the checked address (TLS still verifies the host name). A refused destination is
dead-lettered at once with the reason (core/webhook_address.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any

import httpcore
import httpx
import orjson

from ..config import Config
from ..core.cancellation import raise_if_cancelling
from ..core.stores import Notification, NotificationQueue
from ..core.webhook_address import AddressRefused, IPAddress, Network, literal_address, refusal
from ..core.webhook_signature import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
READ_COUNT = 100  # events read per account and poll
CONCURRENCY = 32  # deliveries in flight per worker
SWEEP_S = 30.0  # full sweep of every outbox (missed wake-ups, pending events)
WAKE_WAIT_S = 1.0
REFUSED = "webhook address refused"


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving each host itself and connecting only to an
    address that passed the check (no second lookup a rebinding DNS server could answer)."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self.allowed = allowed
        self._inner = httpcore.AnyIOBackend()

    async def checked_address(self, host: str) -> IPAddress:
        ip = literal_address(host)
        found: list[IPAddress] = []
        if ip is not None:
            found.append(ip)
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:  # retried: DNS may come back
                raise httpcore.ConnectError(f"{host}: {exc}") from exc
            for info in infos:
                addr = literal_address(str(info[4][0]).split("%")[0])  # without an IPv6 zone
                if addr is None:
                    raise AddressRefused(f"{host} resolves to an unreadable address {info[4][0]!r}")
                if addr not in found:
                    found.append(addr)
        for addr in found:  # every one, not just the one we connect to
            reason = refusal(addr, self.allowed)
            if reason is not None:
                raise AddressRefused(reason if ip is not None else f"{host} resolves to {addr}: {reason}")
        if not found:
            raise httpcore.ConnectError(f"{host}: no address")
        return found[0]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        ip = await asyncio.wait_for(self.checked_address(host), timeout)
        return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not webhook destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (request/response mapping, errors, certificate checks) whose pool
    connects through a CheckedBackend."""

    def __init__(self, allowed: tuple[Network, ...], ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            network_backend=CheckedBackend(allowed),
        )


def webhook_client(config: Config) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=config.notify_timeout_s,
        transport=CheckedTransport(config.notify_networks),
        trust_env=False,
        follow_redirects=False,  # a redirect could point anywhere
    )


def default_consumer() -> str:
    return f"{socket.gethostname()}-notify"


class NotifyWorker:
    def __init__(self, outbox: NotificationQueue, config: Config, client: httpx.AsyncClient | None = None) -> None:
        self.outbox = outbox
        self.config = config
        self.client = client or webhook_client(config)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self.delivered = 0
        self.dead = 0
        self.sweeps = 0

    async def run_forever(self, wake_channel: bool = True) -> None:
        """Deliver as events are announced (settle.lua publishes each on NOTIFY_WAKE), and sweep
        every account's outbox every SWEEP_S for what an announcement missed (a worker that was
        down, Redis Cluster without pub/sub here) and for pending events (own or stale)."""
        woken: asyncio.Queue[str] = asyncio.Queue()
        listener = asyncio.create_task(self._listen(woken)) if wake_channel else None
        last_sweep = -SWEEP_S
        try:
            while True:
                raise_if_cancelling()
                try:
                    if time.monotonic() - last_sweep >= SWEEP_S:
                        last_sweep = time.monotonic()
                        await self.poll(pending=True)
                        await self.poll()
                        self.sweeps += 1
                    try:
                        accounts = {await asyncio.wait_for(woken.get(), WAKE_WAIT_S)}
                    except TimeoutError:
                        continue
                    while not woken.empty():
                        accounts.add(woken.get_nowait())
                    await self.poll(accounts=sorted(accounts))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis down: try again next round
                    raise_if_cancelling(exc)
                    log.warning("notification worker: %s", type(exc).__name__)
                    await asyncio.sleep(1.0)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            await self.client.aclose()

    async def _listen(self, woken: asyncio.Queue[str]) -> None:
        async for account in self.outbox.wakeups():
            if account is not None:  # None: a gap; the periodic sweep covers what was missed
                woken.put_nowait(account)

    async def poll(self, pending: bool = False, accounts: list[str] | None = None) -> int:
        """Start delivering what is waiting (every account's, or `accounts`'); returns how many
        deliveries were started."""
        started = 0
        for account in accounts if accounts is not None else await self.outbox.accounts():
            for n in await self.outbox.read(account, READ_COUNT, pending):
                key = f"{account}/{n.stream_id}"
                if key in self._inflight:
                    continue
                task = asyncio.create_task(self._deliver(n))
                self._inflight[key] = task
                task.add_done_callback(lambda _, k=key: self._inflight.pop(k, None))  # type: ignore[misc]
                started += 1
        return started

    async def drain(self) -> None:
        """Wait for the deliveries in flight (tests, and `notify-worker --once`)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def _deliver(self, n: Notification) -> None:
        try:
            await self._attempts(n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis went away mid-delivery: it stays pending, retried later
            log.warning("notification %s for %s interrupted: %s", n.event_id, n.account, type(exc).__name__)

    async def _attempts(self, n: Notification) -> None:
        async with self._slots:
            error = ""
            for attempt in range(1, self.config.notify_max_attempts + 1):
                url, secret = await self.outbox.webhook(n.account)
                if url is None or secret is None:
                    error = "no webhook URL or secret configured"
                elif url.startswith("http://") and not self.config.notify_allow_http:
                    error = "http:// webhook refused (set CRITIQUE_NOTIFY_ALLOW_HTTP to allow)"
                else:
                    error = await self._post(n, url, secret)
                    if not error:
                        await self.outbox.ack(n)
                        self.delivered += 1
                        return
                if url is None or secret is None or error.startswith(("http:// webhook", REFUSED)):
                    break  # no retry helps: straight to the dead letters
                if attempt < self.config.notify_max_attempts:
                    await self.outbox.touch(n)
                    await asyncio.sleep(min(self.config.notify_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            log.warning("notification %s for %s dead-lettered: %s", n.event_id, n.account, error)
            await self.outbox.dead_letter(n, attempt, error)
            self.dead += 1

    async def _post(self, n: Notification, url: str, secret: str) -> str:
        """One attempt; '' on a 2xx, else what went wrong."""
        body = orjson.dumps(n.payload())
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            ID_HEADER: n.event_id,
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature(secret, ts, body),
            "user-agent": "critique-sidecar-webhooks",
        }
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except AddressRefused as exc:
            return f"{REFUSED}: {exc} (allow networks with CRITIQUE_NOTIFY_ALLOWED_NETWORKS)"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if 200 <= response.status_code < 300:
            return ""
        return f"HTTP {response.status_code}"
