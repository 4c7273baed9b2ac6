"""Meter an OpenAI chat-completions SSE stream as it passes, without buffering it.

Only the current, incomplete event is held (bounded by MAX_EVENT_BYTES); complete events go
straight out. The usage-only chunk that we asked the upstream for is dropped when the client
did not ask for it. The `data: [DONE]` event is held back so the caller can settle first and
put the charge in front of it as an SSE comment line, which every compliant SSE parser
(the OpenAI SDKs included) ignores."""

from __future__ import annotations

import re
from typing import Any

import orjson

from .usage import Usage, completion_text_bytes, usage_from_obj

MAX_EVENT_BYTES = 1 << 20
MAX_KEPT_TEXT_BYTES = 4 << 20  # an opted-in stream longer than this is not captured
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = b"[DONE]"


def _data_of(event: bytes) -> bytes | None:
    """The joined `data:` field of one event, or None for events without data."""
    parts = [
        line[5:].removeprefix(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None


_OUR_MARK = re.compile(rb"(?i)x-critique-")


def _without_forged_comments(event: bytes) -> bytes:
    """The event without comment lines naming our headers: only the sidecar writes the charge
    line, so an upstream's imitation (maybe ahead of the real one) never reaches the client."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    kept = [line for line in lines if not (line.startswith(b":") and _OUR_MARK.search(line))]
    return b"\n".join(kept) if any(kept) else b""


def _delta_texts(obj: dict[str, Any]) -> list[str]:
    return [
        c["delta"]["content"]
        for c in obj["choices"]
        if isinstance(c, dict) and isinstance(c.get("delta"), dict) and isinstance(c["delta"].get("content"), str)
    ]


def _total(usage: Usage) -> int:
    return usage.input_tokens + usage.output_tokens


class SseMeter:
    __slots__ = ("_buf", "_held", "_hide_usage", "_text", "delivered_bytes", "done", "usage")

    def __init__(self, hide_usage: bool, keep_text: bool = False) -> None:
        self._hide_usage = hide_usage
        self._text: list[str] | None = [] if keep_text else None
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
            if _OUR_MARK.search(event):
                event = _without_forged_comments(event)
            if event and self._keep(event):
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
            # One chunk's usage: the largest reported (counts are cumulative, so for an honest
            # stream the last); a later, smaller one never replaces it.
            if self.usage is None or _total(usage) > _total(self.usage):
                self.usage = usage
            if self._hide_usage and isinstance(obj, dict) and not obj.get("choices"):
                return False
        delivered = completion_text_bytes(obj)
        self.delivered_bytes += delivered
        if self._text is not None and delivered:
            if self.delivered_bytes > MAX_KEPT_TEXT_BYTES:
                self._text.clear()  # too long to capture: stop keeping it (bounded memory)
            else:
                self._text.extend(_delta_texts(obj))
        return True

    def text(self) -> str | None:
        """The reassembled completion, when kept and within bounds."""
        if self._text is None or self.delivered_bytes > MAX_KEPT_TEXT_BYTES:
            return None
        return "".join(self._text)

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
