"""Token counts: what a model server reported (each API's `usage`, read by its endpoint module)
or what we estimated. "Not reported" (None) is kept apart from zero.

Dimensions: `input_tokens` is every input token, whatever kind; `cached_input_tokens` (read from
a prompt cache) and the cache writes are parts of it. `output_tokens` is every generated token;
`reasoning_tokens` is a part of it. Parts are never counted on top of their total, so a usage
that names only input and output is priced exactly as before the parts existed.

Naming: `TokenCounts` are tokens; a "usage record" is the billing record of one settlement
(core/ledger.UsageRecord)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenCounts:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0  # part of input_tokens: read from the prompt cache
    cache_write_5m_tokens: int = 0  # part of input_tokens: written to a 5-minute cache
    cache_write_1h_tokens: int = 0  # part of input_tokens: written to a 1-hour cache
    reasoning_tokens: int = 0  # part of output_tokens

    @property
    def fresh_input_tokens(self) -> int:
        """Input tokens that are neither cache reads nor cache writes."""
        return self.input_tokens - self.cached_input_tokens - self.cache_write_5m_tokens - self.cache_write_1h_tokens

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def counts(
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    write_5m: int = 0,
    write_1h: int = 0,
    reasoning: int = 0,
) -> TokenCounts:
    """TokenCounts whose parts never exceed their totals: a part reported larger than what is
    left of its total is cut to it (a server's inconsistent numbers cannot add tokens)."""
    cached = min(cached, input_tokens)
    write_5m = min(write_5m, input_tokens - cached)
    write_1h = min(write_1h, input_tokens - cached - write_5m)
    return TokenCounts(input_tokens, output_tokens, cached, write_5m, write_1h, min(reasoning, output_tokens))


def count(value: Any) -> int | None:
    """A reported count: a JSON integer >= 0, or None (negative, fractional, strings, floats
    and booleans are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def part(details: Any, name: str) -> int:
    """An optional part from a `*_details` object: 0 when absent or not a count."""
    if not isinstance(details, dict):
        return 0
    return count(details.get(name)) or 0


def openai_usage(u: Any, input_name: str, output_name: str) -> TokenCounts | None:
    """An OpenAI usage object: totals `<input_name>` and `<output_name>` with their cached and
    reasoning parts in `<name>_details` (chat's prompt/completion_tokens, the Responses API's
    input/output_tokens); None unless both totals are counts."""
    if not isinstance(u, dict):
        return None
    inp, out = count(u.get(input_name)), count(u.get(output_name))
    if inp is None or out is None:
        return None
    return counts(
        inp,
        out,
        cached=part(u.get(input_name + "_details"), "cached_tokens"),
        reasoning=part(u.get(output_name + "_details"), "reasoning_tokens"),
    )


def decode_body(raw: bytes, content_encoding: str, limit: int = 64 << 20) -> bytes:
    """The body as the upstream meant it: gzip/deflate undone (bounded), others as they are.
    Used for metering only; the client still receives what the upstream sent."""
    encoding = content_encoding.strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return raw
    try:
        inflater = zlib.decompressobj(47)  # gzip or zlib header, detected
        return inflater.decompress(raw, limit)
    except zlib.error:
        return raw
