"""The gateway's upstream connection pool: httpcore's, with each idle connection handed to one
waiting request at a time.

httpcore 1.0 (as of 1.0.9) leaves an HTTP/1.1 connection IDLE after assigning it to a queued
request, until that request's task runs and starts on it. Every assignment pass in between
(and each one assigns every queued request) hands the same idle connection to all the queued
requests; all but one wake to ConnectionNotAvailable, re-queue and run another pass. A burst
of N requests onto a warm pool then costs O(N^2) passes and wake-ups on the event loop: on
the streaming bench (100 streams at once) ~9 passes per request and seconds of time to first
token, and the loop gets so late that the connects it does start overrun their timeout.
(Upstream: encode/httpcore#1035, #1110; the pydantic/httpx2 fork fixed it in its #1075.)

Here a connection referenced by a pending request is reserved: it is never assigned again,
never closed as surplus or expired, until that request is done with it. The pool is HTTP/1.1
only (one request per connection), as the gateway's client is.
"""

from __future__ import annotations

import ssl

import httpcore
import httpx
from httpcore._async.interfaces import AsyncConnectionInterface


class ReservingPool(httpcore.AsyncConnectionPool):
    """httpcore's AsyncConnectionPool, HTTP/1.1 only, assigning an idle connection once."""

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        closing: list[AsyncConnectionInterface] = []
        reserved = {r.connection for r in self._requests if r.connection is not None}
        kept: list[AsyncConnectionInterface] = []
        for conn in self._connections:
            if conn.is_closed():
                continue
            mine = conn in reserved
            if not mine and (conn.has_expired() or not conn.is_idle()):
                # expired, or connecting for a request that was cancelled before it started
                # (for HTTP/1.1 nothing else is busy without a request holding it)
                closing.append(conn)
                continue
            kept.append(conn)
        idle = [c for c in kept if c.is_idle() and c not in reserved]
        for conn in idle[self._max_keepalive_connections :]:
            kept.remove(conn)
            closing.append(conn)
        self._connections = kept

        available = idle[: self._max_keepalive_connections]
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            reuse = next((c for c in available if c.can_handle_request(origin)), None)
            if reuse is not None:
                available.remove(reuse)
                pool_request.assign_to_connection(reuse)
                continue
            if len(self._connections) >= self._max_connections:
                if not available:
                    break  # full: the rest wait for a connection to be released
                old = available.pop(0)  # an idle one to another origin makes room
                self._connections.remove(old)
                closing.append(old)
            conn = self.create_connection(origin)
            self._connections.append(conn)
            pool_request.assign_to_connection(conn)
        return closing


class ReservingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (its request/response mapping and errors) over a ReservingPool."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits=limits, http1=True, http2=False, trust_env=False)
        self._pool = ReservingPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
        )
