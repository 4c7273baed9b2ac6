"""The sidecar process dying or being stopped while a stream is open.

- SIGKILL mid-stream, then restart: the orphaned hold is released once it expires (the next
  admission sweeps it), nothing is charged twice, the account keeps working.
- SIGTERM mid-stream: health turns NOT_SERVING at once, the open stream still finishes with
  its charge comment and [DONE] and is settled, the journal stays empty, the process exits 0.
  The order: the HTTP routes keep answering while the stream drains, and close only after it
  (uvicorn does not get the signal first)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from critique_sidecar.devtools.stack import wait_until

from .faultkit import (
    CHAT_PATH,
    NOT_SERVING,
    SERVING,
    Background,
    body,
    fault_stack,
    funded,
    grpc_port,
    journal,
    ledger,
    post,
    restart_sidecar,
    stream_text,
    upstream_saw,
)

pytestmark = pytest.mark.slow

HOLD_TTL_S = 3


def test_sigkill_mid_stream_hold_expires_and_nothing_is_charged_twice(tmp_path: Path, account: str) -> None:
    with fault_stack(
        tmp_path,
        sidecar_env={"CRITIQUE_HOLD_TTL_S": str(HOLD_TTL_S), "CRITIQUE_REQUEST_DEADLINE_S": str(HOLD_TTL_S - 1)},
    ) as stack:
        key = funded(stack, account)
        first_bytes = threading.Event()
        seen: dict[str, object] = {}

        def stream() -> tuple[int, str]:
            out = []
            with httpx.stream("POST", stack.base_url + CHAT_PATH, json=body("killed [[slow:300]] [[tokens:30]]", stream=True, max_tokens=40),
                              headers={"authorization": f"Bearer {key}"}, timeout=60) as r:  # fmt: skip
                seen["request_id"] = r.headers.get("x-critique-request-id")
                try:
                    for chunk in r.iter_text():
                        out.append(chunk)
                        first_bytes.set()
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    out.append("<<cut>>")
                return r.status_code, "".join(out)

        inflight = Background(stream)
        assert first_bytes.wait(30), "stream never started"
        assert ledger(stack, account).holds == 1  # the stream's hold is open
        stack.stop("sidecar", signal.SIGKILL)
        status, text = inflight.get()
        assert status == 200 and "[DONE]" not in text  # the client's stream is cut, not completed
        killed_id = seen["request_id"]
        assert isinstance(killed_id, str) and killed_id.startswith("req_")

        # No sidecar at all: Envoy answers for it, 503 in the JSON shape, never an empty 500.
        r, elapsed = post(stack, key, body("no sidecar"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text
        assert elapsed < 3
        assert not upstream_saw(stack, "no sidecar")

        restart_sidecar(stack)
        state = ledger(stack, account)
        assert state.holds == 1 and state.records == []  # nobody settles it: it waits for expiry

        expired_at = time.time() + HOLD_TTL_S + 0.5
        wait_until(lambda: time.time() > expired_at, "hold expiry", timeout=HOLD_TTL_S + 5)
        r, _ = post(stack, key, body("after the kill"))  # admission sweeps expired holds
        assert r.status_code == 200, r.text
        state = ledger(stack, account)
        assert state.holds == 0 and state.held == 0
        ids = state.request_ids()
        assert len(ids) == len(set(ids)) == 1 and killed_id not in ids
        assert 10_000_000 - state.balance == state.charged == int(state.records[0]["credits"])


def test_sigterm_mid_stream_drains_settles_and_exits_zero(tmp_path: Path, account: str) -> None:
    with fault_stack(tmp_path) as stack:
        key = funded(stack, account)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port(stack)}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        try:
            assert next(watch).status == SERVING
            payload = body("drained [[slow:250]] [[tokens:12]]", stream=True, max_tokens=20)
            inflight = Background(lambda: stream_text(stack, key, payload))
            wait_until(
                lambda: upstream_saw(stack, "drained") and ledger(stack, account).holds == 1,
                "stream in flight",
                timeout=30,
            )

            proc = stack.procs["sidecar"]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING  # health flips before the server stops
            not_serving_s = time.monotonic() - t0
        finally:
            watch.cancel()  # an open Watch would itself hold the drain for its grace period
            channel.close()

        # Mid-drain (the stream is still open): the HTTP listener still answers.
        models = f"http://127.0.0.1:{stack.ports['http']}/api/v1/models"
        answered = httpx.get(models, headers={"authorization": f"Bearer {key}"}, timeout=5)
        assert inflight.running() and ledger(stack, account).holds == 1, "the stream ended before the check"
        assert answered.status_code == 200 and answered.json()["data"], answered.text

        status, text = inflight.get()
        assert status == 200
        assert ": x-critique-request-id=" in text and "estimated=false" in text  # the in-band charge
        assert text.rstrip().endswith("data: [DONE]")
        assert proc.wait(timeout=40) == 0
        exit_s = time.monotonic() - t0
        with pytest.raises(httpx.ConnectError):  # and closed after the drain
            httpx.get(models, timeout=5)

        state = ledger(stack, account)
        assert len(state.records) == 1 and state.records[0]["status"] == "ok" and state.records[0]["estimated"] == "0"
        assert state.holds == 0 and 10_000_000 - state.balance == state.charged > 0
        assert journal(stack) == []
        print(f"SIGTERM: NOT_SERVING after {not_serving_s * 1000:.0f} ms, stream finished, exit 0 after {exit_s:.2f}s")
