"""Meter an OpenAI chat-completions SSE stream as it passes, without buffering it.

Only the current, incomplete event is held (bounded by MAX_EVENT_BYTES); complete events go
straight out. The usage-only chunk that we asked the upstream for is dropped when the client
did not ask for it. The `data: [DONE]` event is held back so the caller can settle first and
put the charge in front of it as an SSE comment line, which every compliant SSE parser
(the OpenAI SDKs included) ignores."""

from __future__ import annotations

import re

import orjson

from .usage import Usage, completion_text_bytes, usage_from_obj

MAX_EVENT_BYTES = 1 << 20
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = b"[DONE]"


def _data_of(event: bytes) -> bytes | None:
    """The joined `data:` field of one event, or None for events without data."""
    parts = [
        line[5:].removeprefix(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None


class SseMeter:
    __slots__ = ("_hide_usage", "_buf", "_held", "usage", "delivered_bytes", "done")

    def __init__(self, hide_usage: bool) -> None:
        self._hide_usage = hide_usage
        self._buf = bytearray()
        self._held = bytearray()  # [DONE] and whatever follows it
        self.usage: Usage | None = None
        self.delivered_bytes = 0  # completion text bytes passed to the client (for estimates)
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now for this upstream chunk."""
        if self.done:
            self._held += chunk
            return b""
        self._buf += chunk
        out = bytearray()
        start = 0
        for match in _BOUNDARY.finditer(self._buf):
            event = bytes(self._buf[start : match.end()])
            start = match.end()
            if self._keep(event):
                out += event
            if self.done:
                self._held += event
                self._held += self._buf[start:]
                start = len(self._buf)
                break
        del self._buf[:start]
        if len(self._buf) > MAX_EVENT_BYTES:  # not SSE as we know it: pass it on unparsed
            self.delivered_bytes += len(self._buf)
            out += self._buf
            self._buf.clear()
        return bytes(out)

    def _keep(self, event: bytes) -> bool:
        data = _data_of(event)
        if data is None:
            return True
        if data.strip() == _DONE:
            self.done = True
            return False  # held back: the charge goes in front of it
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        usage = usage_from_obj(obj)
        if usage is not None:
            self.usage = usage
            if self._hide_usage and isinstance(obj, dict) and not obj.get("choices"):
                return False
        self.delivered_bytes += completion_text_bytes(obj)
        return True

    def finish(self) -> bytes:
        """Everything still held: [DONE] (if seen) and any trailing partial event."""
        rest = bytes(self._held + self._buf)
        self._held.clear()
        self._buf.clear()
        return rest


def charge_comment(request_id: str, credits: str, usd: str, estimated: bool) -> bytes:
    """The in-band charge: an SSE comment line, ignored by SSE parsers, read by people and tools."""
    return (
        f": x-critique-request-id={request_id} x-critique-credits-charged={credits} "
        f"x-critique-estimated-usd={usd} estimated={'true' if estimated else 'false'}\n\n"
    ).encode()
