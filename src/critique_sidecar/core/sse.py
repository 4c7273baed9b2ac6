"""Meter a server-sent-events stream as it passes, without buffering it.

Framing follows the SSE specification as the SDKs' decoders implement it: lines end with LF,
CRLF or CR in any mix (a CR at the end of one piece and an LF at the start of the next are one
line end), a blank line ends an event, `data:` lines join with LF, `event:` names it, comment
lines start with `:`, other fields (`id:`, `retry:`, unknown ones) are read and ignored, a
leading byte-order mark is skipped. Whatever such a parser takes as an event, the meter takes as
the same event and hands its name and data to the endpoint's `StreamReader`.

Bytes go out as they came, event by event: only the current, incomplete event is held (up to
MAX_EVENT_BYTES; past it the event passes on unparsed and its bytes count as delivered output).
An event the reader drops never goes out; comment lines that imitate our charge line are
removed; the API's last event (`data: [DONE]`, `response.completed`, `message_stop`) is held
back so the caller can settle first and put the charge in front of it as an SSE comment line,
which every compliant parser (the SDKs included) ignores."""

from __future__ import annotations

import re

from .endpoints.base import DROP, KEEP, TERMINAL, StreamReader, StreamTally

MAX_EVENT_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_OUR_MARK = re.compile(rb"(?i)x-critique-")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name, value[1:] if value[:1] == b" " else value


def _without_forged_comments(raw: bytes) -> bytes:
    """The event without comment lines naming our headers: only the sidecar writes the charge
    line, so an upstream's imitation (maybe ahead of the real one) never reaches the client."""
    kept = [line for line in _LINE_END.split(raw) if not (line.startswith(b":") and _OUR_MARK.search(line))]
    return b"\n".join(kept) if any(kept) else b""


class SseMeter:
    __slots__ = (
        "_buf",
        "_comment_forged",
        "_data",
        "_held",
        "_lf_out",
        "_name",
        "_open",
        "_overflow",
        "_reader",
        "_rewrite",
        "_scan",
        "_skip_lf",
        "_started",
        "done",
        "tally",
    )

    def __init__(self, reader: StreamReader, tally: StreamTally, rewrite: tuple[bytes, bytes] | None = None) -> None:
        self._reader = reader
        self.tally = tally
        # Bytes to swap in everything forwarded (the model server's model id for the catalog's).
        self._rewrite = rewrite
        self._buf = bytearray()  # the current, incomplete event's bytes
        self._scan = 0  # how far into _buf lines were read
        self._name: bytes | None = None  # the current event's fields so far
        self._data: list[bytes] | None = None
        self._comment_forged = False
        self._overflow = False  # the current event passed on unparsed
        self._skip_lf = False  # the last piece ended with CR: an LF first in the next ends that line
        self._lf_out = True  # whether the event that CR ended went out
        self._open = False  # the current event has a line already
        self._started = False  # the byte-order-mark check is done
        self._held = bytearray()  # the API's last event and whatever follows it
        self.done = False

    # -- the common cases, without the general framer ----------------------------------
    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now for this upstream piece: `chunk` itself when unchanged."""
        if self.done:
            self._held += chunk
            return b""
        if not self._buf and not self._skip_lf and self._started and b"\r" not in chunk and chunk[-2:] == b"\n\n":
            if chunk[:5] == b"data:" and chunk.find(b"\n") == len(chunk) - 2:
                # The usual piece: exactly one single-line data event.
                return self._one(chunk, None, chunk[6 if chunk[5:6] == b" " else 5 : -2])
            out = self._whole_events(chunk)
            if out is not None:
                return out
        return self._general(chunk)

    def _one(self, raw: bytes, name: bytes | None, data: bytes) -> bytes:
        action = self._reader.event(name, data, self.tally)
        if action == KEEP:
            return raw if self._rewrite is None else self._swap(raw)
        if action == DROP:
            return b""
        if action == TERMINAL:
            self.done = True
            self._held += raw
            return b""
        assert isinstance(action, bytes)
        return self._rebuilt(name, action)

    def _whole_events(self, chunk: bytes) -> bytes | None:
        """feed() for a piece of whole events with LF line ends, each of `data:`, `event:` and
        other field lines (no blank-line runs, no comments): None for anything else."""
        parts = chunk[:-2].split(b"\n\n")
        out: list[bytes] | None = None  # None: every event so far went out unchanged
        offset = 0
        for i, text in enumerate(parts):
            raw_len = len(text) + 2
            if not text or text[:1] == b"\n" or b":" not in text:
                return None if i == 0 else self._rest_general(out, chunk, offset)
            name: bytes | None = None
            data: list[bytes] = []
            for line in text.split(b"\n"):
                if line[:1] == b":":
                    return None if i == 0 else self._rest_general(out, chunk, offset)
                field, value = _field(line)
                if field == b"data":
                    data.append(value)
                elif field == b"event":
                    name = value
            raw = chunk[offset : offset + raw_len]
            result = self._one(raw, name, b"\n".join(data)) if data else raw
            if result is not raw and out is None:
                out = [chunk[:offset]]
            if out is not None:
                out.append(result)
            offset += raw_len
            if self.done:
                self._held += chunk[offset:]
                if out is None:
                    out = [chunk[: offset - raw_len]]
                break
        return chunk if out is None else b"".join(out)

    def _rest_general(self, out: list[bytes] | None, chunk: bytes, offset: int) -> bytes:
        head = chunk[:offset] if out is None else b"".join(out)
        return head + self._general(chunk[offset:])

    # -- the general framer ---------------------------------------------------------------
    def _general(self, chunk: bytes) -> bytes:
        buf = self._buf
        buf += chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)):
                return b""  # maybe a mark: wait for more
            self._started = True
            if buf[:3] == _BOM:
                self._scan = 3
        out = bytearray()
        start = 0  # where the current event's bytes begin in buf
        pos = self._scan
        if self._skip_lf and pos < len(buf):
            if buf[pos] == 0x0A:
                pos += 1
                if not self._open and pos == 1:
                    # The LF of a CRLF that ended an event in the last piece: it goes where
                    # that event went (out, or nowhere if it was dropped).
                    if self._lf_out:
                        out += b"\n"
                    start = 1
            self._skip_lf = False
        while True:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            end = match.end()
            if match.group() == b"\r" and end == len(buf):
                self._skip_lf = True  # an LF that comes next belongs to this line end
            line = buf[pos : match.start()]
            pos = end
            if line:
                self._line(bytes(line))
                continue
            raw = bytes(buf[start:end])  # a blank line: the event ends here
            start = end
            sent = self._dispatch(raw)
            self._lf_out = bool(sent)
            out += sent
            if self.done:
                self._held += buf[start:]
                start = pos = len(buf)
                break
        del buf[:start]
        self._scan = pos - start
        if len(buf) > MAX_EVENT_BYTES:  # not an event we can hold: pass it on unparsed
            self.tally.delivered(len(buf))
            out += buf if self._rewrite is None else self._swap(bytes(buf))
            buf.clear()
            self._scan = 0
            self._overflow = True
        return bytes(out)

    def _line(self, line: bytes) -> None:
        self._open = True
        if self._overflow:
            self.tally.delivered(len(line))
            return
        if line[:1] == b":":
            if _OUR_MARK.search(line):
                self._comment_forged = True
            return
        field, value = _field(line)
        if field == b"data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif field == b"event":
            self._name = value

    def _dispatch(self, raw: bytes) -> bytes:
        name, data, forged, overflow = self._name, self._data, self._comment_forged, self._overflow
        self._name, self._data, self._comment_forged, self._overflow = None, None, False, False
        self._open = False
        if forged:
            raw = _without_forged_comments(raw)
            if not raw:
                return b""
            raw += b"\n\n"
        if overflow or data is None:
            return raw if self._rewrite is None else self._swap(raw)
        return self._one(raw, name, b"\n".join(data))

    # -- output ----------------------------------------------------------------------------
    def _swap(self, raw: bytes) -> bytes:
        assert self._rewrite is not None
        return raw.replace(*self._rewrite)

    def _rebuilt(self, name: bytes | None, data: bytes) -> bytes:
        head = b"event: " + name + b"\n" if name is not None else b""
        event = head + b"data: " + data + b"\n\n"
        return event if self._rewrite is None else self._swap(event)

    def finish(self) -> bytes:
        """Everything still held, at the stream's end: the last event (if seen) and a trailing
        event the stream never finished, whose data still counts as delivered (it reaches the
        client, though no parser dispatches it)."""
        if not self.done and self._buf:
            tail = bytes(self._buf[self._scan :])
            if tail:
                self._line(tail.rstrip(b"\r"))
            if self._data is not None and not self._overflow:
                self.tally.delivered(sum(len(d) for d in self._data))
        rest = bytes(self._held + self._buf)
        self._held.clear()
        self._buf.clear()
        self._scan = 0
        self._name, self._data, self._overflow = None, None, False
        return rest if self._rewrite is None else self._swap(rest)


def charge_comment(request_id: str, credits: str, usd: str, estimated: bool) -> bytes:
    """The in-band charge: an SSE comment line, ignored by SSE parsers, read by people and tools.
    One line and no blank line after it: it becomes a line of the last event, whereas a blank
    line of its own would make the SDKs dispatch an empty event once the stream has sent an `id:`
    (they keep the last event id and dispatch on it)."""
    return (
        f": x-critique-request-id={request_id} x-critique-credits-charged={credits} "
        f"x-critique-estimated-usd={usd} estimated={'true' if estimated else 'false'}\n"
    ).encode()


__all__ = ["DROP", "KEEP", "MAX_EVENT_BYTES", "TERMINAL", "SseMeter", "charge_comment"]
