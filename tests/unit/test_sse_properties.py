"""Property-based tests for the SSE meter (core/sse.py).

The meter reads what the client reads: for generated framings (LF, CRLF and CR line ends in any
mix, `event:`/`id:`/`retry:`/unknown fields, multi-line `data:`, comments, a leading byte-order
mark) and any split into pieces, the events the meter hands its reader equal the events the
openai SDK's own decoder (openai._streaming.SSEDecoder, what its clients run) yields. And
whatever bytes the upstream sends, however they are split, the meter never raises, never alters
the stream beyond dropping the hidden usage chunk and holding back [DONE] for the charge, and
meters the same usage and delivered output."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from critique_sidecar.core.endpoints.base import KEEP, StreamTally
from critique_sidecar.core.sse import SseMeter
from critique_sidecar.core.tokens import TokenCounts

from ..chat_kit import chat_sse

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like SSE often enough to reach every branch: field names, separators in all
# three spellings, JSON fragments, [DONE], non-UTF-8.
FRAGMENTS = [b"data:", b"data: ", b"event: x", b": comment", b"\n", b"\r\n", b"\r", b"\n\n", b"[DONE]", b"{", b"}",
             b'"usage":', b'{"prompt_tokens":1,"completion_tokens":2}', b'"choices":[]', b'{"delta":{"content":"hi"}}',
             b"\xff\xfe", b"null", b"123", b" ", b"id: 7", b"retry: 10", b"\xef\xbb\xbf"]  # fmt: skip
sse_like = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=8), max_size=40).map(b"".join)
cuts_st = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def run(chunks: list[bytes], hide_usage: bool) -> tuple[bytes, TokenCounts | None, int, bool]:
    meter = chat_sse(hide_usage)
    out = b"".join(meter.feed(c) for c in chunks) + meter.finish()
    return out, meter.tally.usage, meter.tally.output_bytes, meter.done


# -- the same events as the SDK's decoder ------------------------------------------------------


class Recorder:
    """A StreamReader that keeps every event it is handed."""

    def __init__(self) -> None:
        self.events: list[tuple[str | None, str]] = []

    def event(self, name: bytes | None, data: bytes, tally: StreamTally) -> int:
        self.events.append((None if name is None else name.decode(), data.decode()))
        return KEEP


def meter_events(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    recorder = Recorder()
    meter = SseMeter(recorder, StreamTally())
    for chunk in chunks:
        meter.feed(chunk)
    meter.finish()
    return [(name, data) for name, data in recorder.events if data]


def sdk_events(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    return [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter(chunks)) if e.data]


line_end = st.sampled_from(["\n", "\r\n", "\r"])
field_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
data_line = st.builds(lambda v, space: "data:" + (" " if space else "") + v, field_text, st.booleans())
other_line = st.one_of(
    st.builds(lambda v: "event: " + v, field_text.filter(lambda t: t.strip() != "")),
    st.builds(lambda v: "id: " + v, field_text),
    st.builds(lambda v: "retry: " + v, st.integers(0, 10**6).map(str) | field_text),
    st.builds(lambda v: ":" + v, field_text),  # a comment
    st.builds(lambda v: "x-unknown: " + v, field_text),
)
sse_event = st.lists(st.tuples(data_line | other_line, line_end), min_size=1, max_size=5)


def framed(events: list[list[tuple[str, str]]], blank: list[str]) -> bytes:
    out = []
    for i, lines in enumerate(events):
        out += [line + end for line, end in lines]
        out.append(blank[i % len(blank)])  # the blank line that ends the event
    return "".join(out).encode()


@SETTINGS
@given(st.lists(sse_event, max_size=8), st.lists(line_end, min_size=1, max_size=3), cuts_st)
def test_the_meter_reads_the_events_the_sdk_reads(
    events: list[list[tuple[str, str]]], blank: list[str], cuts: list[int]
) -> None:
    data = framed(events, blank)
    chunks = split(data, cuts)
    assert meter_events(chunks) == sdk_events(chunks)
    assert meter_events([bytes([b]) for b in data]) == sdk_events([data])  # one byte at a time


@SETTINGS
@given(st.lists(sse_event, min_size=1, max_size=5), line_end, cuts_st)
def test_a_leading_byte_order_mark_is_skipped(events: list[list[tuple[str, str]]], blank: str, cuts: list[int]) -> None:
    """The specification strips a leading BOM; the openai SDK's decoder does not (its first line
    would then name the field "\\ufeffdata"), so the reference reads the stream without it."""
    data = framed(events, [blank])
    assert meter_events(split(b"\xef\xbb\xbf" + data, cuts)) == sdk_events([data])


@SETTINGS
@given(sse_like, cuts_st)
def test_the_meter_reads_what_the_sdk_reads_in_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # see the test above
    try:
        expected = sdk_events([data])
    except UnicodeDecodeError:
        return  # the SDK cannot decode it at all; the meter still never raises (below)
    assert meter_events(split(data, cuts)) == expected


# -- the stream as it passes ---------------------------------------------------------------------


@SETTINGS
@given(sse_like, cuts_st, st.booleans())
def test_any_bytes_any_chunking_never_raise_and_meter_the_same(data: bytes, cuts: list[int], hide_usage: bool) -> None:
    whole = run([data], hide_usage)
    assert run(split(data, cuts), hide_usage) == whole
    assert run([bytes([b]) for b in data], hide_usage) == whole  # one byte at a time


@SETTINGS
@given(sse_like, cuts_st)
def test_without_hiding_the_stream_passes_byte_for_byte(data: bytes, cuts: list[int]) -> None:
    out, *_ = run(split(data, cuts), hide_usage=False)
    assert out == data  # [DONE] is only held back, never lost or moved past other bytes


@SETTINGS
@given(st.binary(max_size=400).filter(lambda b: b"data:" not in b))
def test_a_stream_without_data_lines_charges_nothing(data: bytes) -> None:
    out, usage, delivered, _ = run([data], hide_usage=True)
    assert out == data and usage is None and delivered == 0


def test_data_the_meter_cannot_parse_still_counts_as_delivered() -> None:
    _, usage, delivered, _ = run([b"data: not json at all\n\n", b"data: [1,2]\n\n"], hide_usage=False)
    assert usage is None and delivered == len(b"not json at all") + len(b"[1,2]")


def test_an_unfinished_last_event_counts_what_it_carried() -> None:
    _, _, delivered, done = run([b'data: {"choices":[{"delta":{"content":"ok"}}]}\n\ndata: {"choices":[{"del'], False)
    assert not done and delivered == 2 + len(b'{"choices":[{"del')


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
newline = st.sampled_from(["\n\n", "\r\n\r\n", "\r\r", "\n\r\n", "\r\n\n", "\r\r\n"])


def event(obj: Any, sep: str) -> bytes:
    return b"data: " + orjson.dumps(obj) + sep.encode()


@SETTINGS
@given(
    st.lists(st.tuples(text, newline), max_size=10),
    st.none() | st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
    st.booleans(),
    cuts_st,
)
def test_a_well_formed_stream_is_metered_exactly(
    pieces: list[tuple[str, str]], usage: tuple[int, int] | None, hide_usage: bool, cuts: list[int]
) -> None:
    chunks = [event({"choices": [{"index": 0, "delta": {"content": t}}]}, sep) for t, sep in pieces]
    usage_event = b""
    if usage is not None:
        usage_event = event(
            {"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}, "\n\n"
        )
    data = b"".join(chunks) + usage_event + b"data: [DONE]\n\n"

    out, got_usage, delivered, done = run(split(data, cuts), hide_usage)
    assert done
    assert delivered == sum(len(t.encode()) for t, _ in pieces)
    assert got_usage == (TokenCounts(*usage) if usage is not None else None)
    expected = b"".join(chunks) + (b"" if hide_usage else usage_event) + b"data: [DONE]\n\n"
    assert out == expected


@SETTINGS
@given(
    st.lists(text, min_size=1, max_size=8),
    st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
    st.booleans(),
    cuts_st,
)
def test_usage_riding_on_a_text_chunk_is_metered_and_the_text_still_reaches_the_client(
    texts: list[str], usage: tuple[int, int], hide_usage: bool, cuts: list[int]
) -> None:
    """Some servers put usage on the last content chunk instead of a `choices: []` chunk of its
    own: that chunk carries completion text, so it always goes out; when the client did not ask
    for usage, without its `usage` member."""
    chunks = [event({"choices": [{"index": 0, "delta": {"content": t}}]}, "\n\n") for t in texts[:-1]]
    usage_obj = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    last = {"choices": [{"index": 0, "delta": {"content": texts[-1]}}]}
    data = b"".join(chunks) + event({**last, "usage": usage_obj}, "\n\n") + b"data: [DONE]\n\n"

    out, got_usage, delivered, done = run(split(data, cuts), hide_usage)
    assert done and got_usage == TokenCounts(*usage)
    assert delivered == sum(len(t.encode()) for t in texts)
    assert out == (b"".join(chunks) + event(last, "\n\n") + b"data: [DONE]\n\n" if hide_usage else data)


def test_dense_one_token_events_count_a_token_each() -> None:
    """One 2-byte token per event (" a"): ~4 bytes per token would say half of them."""
    meter = chat_sse()
    for _ in range(1990):
        meter.feed(event({"choices": [{"index": 0, "delta": {"content": " a"}}]}, "\n\n"))
    assert meter.tally.output_bytes == 3980 and meter.tally.text_events == 1990
