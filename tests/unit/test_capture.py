"""The opt-in price applies only when the capture was written (core/capture.py's rule)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from critique_sidecar.core.catalog import Catalog, load_catalog
from critique_sidecar.core.endpoints.chat import ENDPOINT as CHAT
from critique_sidecar.core.endpoints.openai_stream import message_text
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.settlement import NOTHING
from critique_sidecar.core.tokens import TokenCounts

from ..chat_kit import chat_exchange, chat_sse, kept_text
from ..fakes import FixedClock, ListSink, MemoryLedger
from .test_metering import CENT, DEEPSEEK, IDENT, NOW, TENCENT, chat_body


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


async def _settle(
    catalog: Catalog, sink: ListSink | None, model: str = DEEPSEEK, opt_in: bool = True, text: str | None = "hello"
):
    ledger = MemoryLedger()
    meter = Meter(catalog, ledger, CENT, clock=FixedClock(NOW), capture=sink, capture_timeout_s=0.05)
    req = await meter.admit(IDENT, meter.parse(CHAT, chat_body(model)), opt_in_header=opt_in)
    _result, charge = await meter.settle_completed(req, TokenCounts(100, 2000), NOTHING, lambda: text)
    return ledger.records[-1], charge


async def test_captured_request_keeps_opt_in_price(catalog: Catalog) -> None:
    sink = ListSink()
    record, charge = await _settle(catalog, sink)
    assert record.opt_in and record.price_version.endswith("/training-opt-in")
    assert charge.usd == Decimal("0.00015375")  # 100 x 0.0375 + 2000 x 0.075, per million
    [cap] = sink.records
    assert cap.completion == "hello" and cap.credits == record.credits and cap.request_id == record.request_id
    assert cap.messages == [{"role": "user", "content": "Draft a type for idempotent enqueue."}]


@pytest.mark.parametrize(
    "sink", [None, ListSink(fail=ConnectionError("sink down")), ListSink(delay=1.0)], ids=["off", "failing", "slow"]
)
async def test_uncaptured_request_pays_the_normal_price(catalog: Catalog, sink: ListSink | None) -> None:
    record, charge = await _settle(catalog, sink)
    assert not record.opt_in and record.price_version.endswith("/list")
    assert charge.usd == Decimal("0.000615")  # 100 x 0.15 + 2000 x 0.30, per million
    assert sink is None or not sink.records


async def test_no_capture_without_opt_in_or_for_models_without_the_tier(catalog: Catalog) -> None:
    sink = ListSink()
    await _settle(catalog, sink, opt_in=False)
    record, _ = await _settle(catalog, sink, model=TENCENT, opt_in=True)
    assert sink.records == [] and not record.opt_in


async def test_missing_completion_text_means_no_capture_and_normal_price(catalog: Catalog) -> None:
    sink = ListSink()
    record, _ = await _settle(catalog, sink, text=None)
    assert sink.records == [] and not record.opt_in


def test_completion_text_and_stream_text() -> None:
    assert message_text({"choices": [{"message": {"content": "a"}}, {"message": {"content": "b"}}]}) == "ab"
    assert message_text(None) is None
    kept = chat_sse(keep_text=True)
    kept.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: {"choices":[{"delta":{"content":"y"}}]}\n\n')
    assert kept_text(kept) == "xy"
    plain = chat_sse()
    plain.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
    assert kept_text(plain) is None  # nothing kept unless opted in


async def test_needs_close_tracks_open_holds_and_open_streams(catalog: Catalog) -> None:
    from critique_sidecar.core.auth import Authenticator

    meter = Meter(catalog, MemoryLedger(), CENT, clock=FixedClock(NOW))
    x = chat_exchange(Authenticator(None), meter, identity=IDENT)  # type: ignore[arg-type]
    assert not x.needs_close()  # nothing admitted
    await x.admit(chat_body(stream=True))
    assert x.needs_close()  # a hold is open
    await x.response_start(200, {"content-type": "text/event-stream"})
    out = x.stream(b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n', True)
    assert not isinstance(out, bytes)  # the stream is over: settling is awaited
    await out
    assert x.metered is not None and x.metered.settled is not None
    assert x.needs_close()  # settled, but the open-streams gauge still has to be closed
    await x.close()
    assert not x.needs_close()
