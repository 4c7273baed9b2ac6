"""Budget-notification webhooks: how a delivery is signed and how a receiver verifies it.

    Critique-Webhook-Id:        the event id (stable across retries: deduplicate by it)
    Critique-Webhook-Timestamp: Unix seconds when this attempt was signed
    Critique-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes with the
account's secret, compares in constant time, and refuses timestamps more than a few minutes
from its clock (a captured delivery cannot be replayed later)."""

from __future__ import annotations

import hashlib
import hmac
import time

ID_HEADER = "critique-webhook-id"
TIMESTAMP_HEADER = "critique-webhook-timestamp"
SIGNATURE_HEADER = "critique-webhook-signature"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    sent: str,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when `sent` signs `body` at `timestamp` and the timestamp is within tolerance."""
    if not timestamp.isdigit():
        return False
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, ts, body), sent)
