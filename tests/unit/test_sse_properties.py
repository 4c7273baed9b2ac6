"""Property-based tests for the SSE meter (core/sse.py): whatever bytes the upstream sends, and
however they are split into chunks, the meter never raises, never alters the stream beyond
dropping the hidden usage chunk and holding back [DONE] for the charge, meters the same usage
and delivered text, and charges nothing for a stream carrying no completion text."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from critique_sidecar.core.sse import SseMeter
from critique_sidecar.core.tokens import TokenCounts

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like SSE often enough to reach every branch: field names, separators in all
# three spellings, JSON fragments, [DONE], non-UTF-8.
FRAGMENTS = [b"data:", b"data: ", b"event: x", b": comment", b"\n", b"\r\n", b"\r", b"\n\n", b"[DONE]", b"{", b"}",
             b'"usage":', b'{"prompt_tokens":1,"completion_tokens":2}', b'"choices":[]', b'{"delta":{"content":"hi"}}',
             b"\xff\xfe", b"null", b"123", b" "]  # fmt: skip
sse_like = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=8), max_size=40).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def run(chunks: list[bytes], hide_usage: bool) -> tuple[bytes, TokenCounts | None, int, bool]:
    meter = SseMeter(hide_usage=hide_usage)
    out = b"".join(meter.feed(c) for c in chunks) + meter.finish()
    return out, meter.usage, meter.delivered_bytes, meter.done


@SETTINGS
@given(sse_like, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), st.booleans())
def test_any_bytes_any_chunking_never_raise_and_meter_the_same(data: bytes, cuts: list[int], hide_usage: bool) -> None:
    whole = run([data], hide_usage)
    assert run(split(data, cuts), hide_usage) == whole
    assert run([bytes([b]) for b in data], hide_usage) == whole  # one byte at a time


@SETTINGS
@given(sse_like, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_without_hiding_the_stream_passes_byte_for_byte(data: bytes, cuts: list[int]) -> None:
    out, *_ = run(split(data, cuts), hide_usage=False)
    assert out == data  # [DONE] is only held back, never lost or moved past other bytes


@SETTINGS
@given(st.binary(max_size=400).filter(lambda b: b"data:" not in b))
def test_a_stream_without_data_lines_charges_nothing(data: bytes) -> None:
    out, usage, delivered, _ = run([data], hide_usage=True)
    assert out == data and usage is None and delivered == 0


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
newline = st.sampled_from(["\n\n", "\r\n\r\n", "\r\r"])


def event(obj: Any, sep: str) -> bytes:
    return b"data: " + orjson.dumps(obj) + sep.encode()


@SETTINGS
@given(
    st.lists(st.tuples(text, newline), max_size=10),
    st.none() | st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
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
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_usage_riding_on_a_text_chunk_is_metered_and_the_text_still_reaches_the_client(
    texts: list[str], usage: tuple[int, int], hide_usage: bool, cuts: list[int]
) -> None:
    """Some servers put usage on the last content chunk instead of a `choices: []` chunk of its
    own: that chunk carries completion text, so it is never hidden, whoever asked for usage."""
    chunks = [event({"choices": [{"index": 0, "delta": {"content": t}}]}, "\n\n") for t in texts[:-1]]
    usage_obj = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    chunks.append(event({"choices": [{"index": 0, "delta": {"content": texts[-1]}}], "usage": usage_obj}, "\n\n"))
    data = b"".join(chunks) + b"data: [DONE]\n\n"

    out, got_usage, delivered, done = run(split(data, cuts), hide_usage)
    assert done and got_usage == TokenCounts(*usage)
    assert delivered == sum(len(t.encode()) for t in texts)
    assert out == data


def test_a_usage_chunk_with_text_is_kept_even_when_usage_is_hidden() -> None:
    chunk = event({"choices": [{"index": 0, "delta": {"content": "last words"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, "\n\n")  # fmt: skip
    out, usage, delivered, _ = run([chunk + b"data: [DONE]\n\n"], hide_usage=True)
    assert out == chunk + b"data: [DONE]\n\n" and usage == TokenCounts(3, 2) and delivered == len(b"last words")
