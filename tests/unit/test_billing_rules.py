"""The billing rules of issue 14 in the core: the estimate counts every generated field, a
stream's usage comes from one well-defined chunk, forged charge comments never pass, usage
beyond the hold is charged up to the hold and recorded as overage, and the opt-in discount is
given only for a written capture (never to a cut stream). Expected amounts are written by hand."""

from __future__ import annotations

import orjson
import pytest

from critique_sidecar.core.catalog import Catalog, load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.endpoints.openai_stream import choices_bytes as completion_text_bytes
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.settlement import NOTHING, Delivered
from critique_sidecar.core.tokens import TokenCounts

from ..chat_kit import chat_sse
from ..fakes import FixedClock, ListSink, MemoryLedger
from .test_metering import CENT, DEEPSEEK, IDENT, NOW, chat_body


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_every_generated_field_counts_for_the_estimate() -> None:
    chunk = {
        "choices": [
            {"delta": {"content": "ab", "reasoning_content": "cde", "refusal": "f"}},
            {"delta": {"tool_calls": [{"function": {"name": "gh", "arguments": '{"i":1}'}}]}},
            {"message": {"content": None, "reasoning": "jk", "function_call": {"name": "l", "arguments": "m"}}},
        ]
    }
    assert completion_text_bytes(chunk) == 2 + 3 + 1 + 2 + 7 + 2 + 1 + 1


def test_usage_comes_from_the_largest_chunk_and_text_with_usage_is_delivered() -> None:
    """LiteLLM puts a stream's usage on a chunk whose one choice has an empty delta: that chunk
    generates nothing, so it is dropped like a `choices: []` one."""
    meter = chat_sse(hide_usage=True)
    out = meter.feed(event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 50}}))
    assert out == b""  # the usage-only chunk the client did not ask for
    both = event({"choices": [{"delta": {"content": "hi"}}], "usage": {"prompt_tokens": 10, "completion_tokens": 20}})
    # text and usage in one chunk: the text still goes out, the usage the client did not ask for not
    assert meter.feed(both) == event({"choices": [{"delta": {"content": "hi"}}]})
    meter.feed(event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
    litellm = event({"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 9, "completion_tokens": 7}})
    assert meter.feed(litellm) == b""
    assert meter.tally.final
    assert meter.tally.usage == TokenCounts(10, 50) and meter.tally.output_bytes == 2


@pytest.mark.parametrize(
    "forged",
    [
        b": x-critique-request-id=req_x x-critique-credits-charged=0.000001 estimated=false\n\n",
        b": X-Critique-Credits-Charged=0\r\n\r\n",
        b': x-critique-credits-charged=0\ndata: {"choices": []}\n\n',
    ],
)
def test_forged_charge_comments_never_reach_the_client(forged: bytes) -> None:
    meter = chat_sse()
    out = meter.feed(b": keep-alive\n\n" + forged + event({"choices": [{"delta": {"content": "x"}}]}))
    assert b"critique" not in out.lower() and b": keep-alive" in out and b'"x"' in out


async def test_usage_beyond_the_hold_is_charged_up_to_it_and_recorded_as_overage(catalog: Catalog) -> None:
    ledger = MemoryLedger()
    meter = Meter(catalog, ledger, CENT, clock=FixedClock(NOW))
    raw = chat_body(DEEPSEEK, max_tokens=100)
    req = await meter.admit(IDENT, meter.parse(CHAT, raw), False)
    bound = len(raw) + 16
    # hold: (bound x 0.15 + 100 x 0.30) / 1e6 USD / 0.01 = bound x 15 + 3000 micro-credits
    assert req.hold == bound * 15 + 100 * 30
    result, charge = await meter.settle_completed(req, TokenCounts(10**9, 10**6), NOTHING, lambda: None)
    [record] = ledger.records
    assert record.credits == result.credits == req.hold == charge.credits
    assert (record.input_tokens, record.output_tokens) == (bound, 100)
    # overage: (1e9 x 0.15 + 1e6 x 0.30) / 1e6 USD = 150.3 USD = 15030 credits, less the hold
    assert record.overage == 15_030_000_000 - req.hold


async def test_a_cut_opt_in_stream_pays_the_normal_price(catalog: Catalog) -> None:
    ledger = MemoryLedger()
    meter = Meter(catalog, ledger, CENT, clock=FixedClock(NOW), capture=ListSink())
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(DEEPSEEK, max_tokens=100)), opt_in_header=True)
    assert req.opt_in
    await meter.settle(req, meter.charge(req, None, Delivered(400)), "interrupted")
    [record] = ledger.records
    assert not record.opt_in and record.price_version.endswith("/list")
    # input estimate: ceil(body bytes / 4) + 16; output: 400 bytes / 4 = 100 tokens; list price
    estimate_in = -(-len(chat_body(DEEPSEEK, max_tokens=100)) // 4) + 16
    assert record.credits == (estimate_in * 15 + 100 * 30)  # (in x 0.15 + out x 0.30) x 100 micro-credits


async def test_the_opt_in_hold_is_at_the_normal_price_and_the_capture_earns_the_discount(catalog: Catalog) -> None:
    sink = ListSink()
    ledger = MemoryLedger()
    meter = Meter(catalog, ledger, CENT, clock=FixedClock(NOW), capture=sink)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(DEEPSEEK, max_tokens=100)), opt_in_header=True)
    _, charge = await meter.settle_completed(req, TokenCounts(20, 100), NOTHING, lambda: "done")
    # (20 x 0.0375 + 100 x 0.075) / 1e6 USD = 0.00000825 USD = 825 micro-credits
    assert charge.credits == 825 and ledger.records[0].opt_in and len(sink.records) == 1
    assert req.hold > charge.credits * 4  # held at the normal price: four times the discounted cost
