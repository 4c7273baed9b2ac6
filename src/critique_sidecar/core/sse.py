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

from .tokens import TokenCounts, completion_text_bytes, usage_from_obj

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


def _plain_events(chunk: bytes) -> list[tuple[int, int, int]] | None:
    """(event start, data start, data end) of each event when `chunk` is nothing but whole,
    single-line `data:` events, which is what model servers send; None for anything else
    (a partial event, comments or other fields, CR line ends). Such events need no framing
    work: no comment line can hide in them and their data is one slice of the chunk."""
    if b"\r" in chunk:
        return None
    spans = []
    start, end = 0, len(chunk)
    while start < end:
        newline = chunk.find(b"\n", start)
        if newline < 0 or newline + 1 >= end or chunk[newline + 1] != 0x0A or not chunk.startswith(b"data:", start):
            return None
        spans.append((start, start + 6 if chunk[start + 5] == 0x20 else start + 5, newline))
        start = newline + 2
    return spans


_PLAIN_DELTA = frozenset(("role", "content"))


def _generated_bytes(obj: Any) -> int:
    """completion_text_bytes(obj), without its general walk for the usual chunk: one choice
    whose delta holds only a role and content."""
    if type(obj) is dict:
        choices = obj.get("choices")
        if type(choices) is list and len(choices) == 1:
            choice = choices[0]
            if type(choice) is dict and "message" not in choice:
                delta = choice.get("delta")
                if type(delta) is dict and delta.keys() <= _PLAIN_DELTA:
                    content = delta.get("content")
                    if type(content) is not str:
                        return 0
                    return len(content) if content.isascii() else len(content.encode("utf-8", "replace"))
    return completion_text_bytes(obj)


def _delta_texts(obj: dict[str, Any]) -> list[str]:
    return [
        c["delta"]["content"]
        for c in obj["choices"]
        if isinstance(c, dict) and isinstance(c.get("delta"), dict) and isinstance(c["delta"].get("content"), str)
    ]


def _total(usage: TokenCounts) -> int:
    return usage.input_tokens + usage.output_tokens


class SseMeter:
    __slots__ = ("_buf", "_held", "_hide_usage", "_text", "delivered_bytes", "done", "usage")

    def __init__(self, hide_usage: bool, keep_text: bool = False) -> None:
        self._hide_usage = hide_usage
        self._text: list[str] | None = [] if keep_text else None
        self._buf = bytearray()
        self._held = bytearray()  # [DONE] and whatever follows it
        self.usage: TokenCounts | None = None
        self.delivered_bytes = 0  # completion text bytes passed to the client (for estimates)
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now for this upstream chunk: `chunk` itself when unchanged."""
        if self.done:
            self._held += chunk
            return b""
        if not self._buf:
            # The usual chunk: exactly one single-line data event.
            if (
                chunk.find(b"\n") == len(chunk) - 2
                and chunk.endswith(b"\n\n")
                and chunk.startswith(b"data:")
                and b"\r" not in chunk
            ):
                if self._keep_data(chunk[6 if chunk[5] == 0x20 else 5 : -2]):
                    return chunk
                if self.done:
                    self._held += chunk
                return b""
            spans = _plain_events(chunk)
            if spans is not None:
                return self._feed_plain(chunk, spans)
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

    def _feed_plain(self, chunk: bytes, spans: list[tuple[int, int, int]]) -> bytes:
        """feed() for a chunk of whole single-line data events: no copy unless one is dropped."""
        kept: list[bytes] | None = None  # None: every event so far is kept
        for start, data_start, data_end in spans:
            if self._keep_data(chunk[data_start:data_end]):
                if kept is not None:
                    kept.append(chunk[start : data_end + 2])
                continue
            if kept is None:
                kept = [chunk[:start]]
            if self.done:
                self._held += chunk[start:]
                break
        return chunk if kept is None else b"".join(kept)

    def _keep(self, event: bytes) -> bool:
        data = _data_of(event)
        return True if data is None else self._keep_data(data)

    def _keep_data(self, data: bytes) -> bool:
        if _DONE in data and data.strip() == _DONE:
            self.done = True
            return False  # held back: the charge goes in front of it
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        usage = usage_from_obj(obj) if type(obj) is dict and "usage" in obj else None
        if usage is not None:
            # One chunk's usage: the largest reported (counts are cumulative, so for an honest
            # stream the last); a later, smaller one never replaces it.
            if self.usage is None or _total(usage) > _total(self.usage):
                self.usage = usage
            if self._hide_usage and isinstance(obj, dict) and not obj.get("choices"):
                return False
        delivered = _generated_bytes(obj)
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
