"""Chat completions through the core's seam, for unit tests of pure logic: the endpoint, its
stream meter, and an exchange over in-memory stores (tests/fakes.py)."""

from __future__ import annotations

from typing import Any

from critique_sidecar.core.auth import Authenticator, Identity
from critique_sidecar.core.endpoints import chat
from critique_sidecar.core.endpoints.base import StreamTally
from critique_sidecar.core.exchange import Exchange
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.sse import SseMeter

CHAT = chat.ENDPOINT


def chat_sse(hide_usage: bool = False, keep_text: bool = False) -> SseMeter:
    """The stream meter of a chat completion (hiding the usage chunk when the client did not
    ask for it; keeping the text for an opted-in capture)."""
    return SseMeter(
        chat.openai_stream.ChoicesStream(chat.usage, hide_usage), StreamTally(text=[] if keep_text else None)
    )


def kept_text(meter: SseMeter) -> str | None:
    text = meter.tally.text
    return None if text is None else "".join(text)


def chat_exchange(auth: Authenticator | Any, meter: Meter, identity: Identity | None = None) -> Exchange:
    return Exchange(CHAT, auth, meter, identity=identity)
