"""observability/logs.py: one logging setup; one JSON line per settled or denied request, with
ids, decision and charge, and never the prompt or the completion."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from critique_sidecar import cli
from critique_sidecar.core.ledger import HoldResult
from critique_sidecar.observability import Metrics, RequestLog, Telemetry
from critique_sidecar.observability.logs import JsonFormatter, TextFormatter, configure_logging

from .test_metrics import chat, completion, make_core, refused, run_json

CANARY = "CANARY-7f3a9c-do-not-log"
REQUIRED = {"request_id", "account", "key_id", "model", "decision", "code", "credits", "estimated", "latency_ms"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.fixture
def captured(restore_logging: None) -> io.StringIO:
    """Every logger, at DEBUG, as JSON lines into a buffer (as `serve` would write them)."""
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    return out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_fields(captured: io.StringIO) -> None:
    logging.getLogger("critique_sidecar.test").warning(
        "hello %s", "there", extra={"fields": {"account": "acme", "n": 3}}
    )
    [line] = lines(captured)
    assert line["level"] == "WARNING" and line["logger"] == "critique_sidecar.test" and line["msg"] == "hello there"
    assert line["account"] == "acme" and line["n"] == 3
    assert isinstance(line["ts"], str) and line["ts"].endswith("Z")


def test_exceptions_stay_on_one_json_line(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("critique_sidecar.test").exception("failed")
    [line] = lines(captured)  # one line, however long the traceback
    assert "RuntimeError: boom" in str(line["exc"])


def test_text_format_and_level(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("warning", "text", stream=out)
    log = logging.getLogger("critique_sidecar.test")
    log.info("not shown")
    log.warning("shown", extra={"fields": {"code": "ok"}})
    text = out.getvalue()
    assert "not shown" not in text
    assert text.count("\n") == 1 and "WARNING critique_sidecar.test: shown code=ok" in text
    assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)


def test_unknown_format_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="json, text"):
        configure_logging("INFO", "xml")


def test_the_cli_sets_logging_up_from_the_settings(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRITIQUE_LOG_FORMAT", "text")
    monkeypatch.setenv("CRITIQUE_LOG_LEVEL", "ERROR")
    assert cli.main(["config-table"]) == 0
    root = logging.getLogger()
    assert root.level == logging.ERROR and isinstance(root.handlers[0].formatter, TextFormatter)
    monkeypatch.setenv("CRITIQUE_LOG_FORMAT", "json")
    assert cli.main(["config-table"]) == 0
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    monkeypatch.setenv("CRITIQUE_LOG_FORMAT", "xml")
    assert cli.main(["config-table"]) == 2
    assert "CRITIQUE_LOG_FORMAT: Input should be" in capsys.readouterr().err


async def test_settled_and_denied_requests_log_one_line_each_without_payload(captured: io.StringIO) -> None:
    core = make_core(Telemetry(Metrics(process=False), RequestLog()))
    key = core.keys.add("acme")
    await run_json(
        core, key, chat(content=f"Summarize {CANARY} please"), completion(12, 7, text=f"Reply with {CANARY}")
    )
    core.ledger.result = HoldResult("insufficient_credits", funds={"balance": 0, "floor": 0, "held": 0})
    assert (
        await refused(core, {"authorization": f"Bearer {key}", "x-request-id": "trace-9"}, chat(content=CANARY))
        == "insufficient_credits"
    )
    assert (
        await refused(core, {"authorization": f"Bearer {key}"}, chat(model=CANARY, content=CANARY)) == "model_not_found"
    )

    assert CANARY not in captured.getvalue()  # not in any line, from any logger, at DEBUG
    requests = [line for line in lines(captured) if line["logger"] == "critique_sidecar.requests"]
    assert [r["event"] for r in requests] == ["settled", "denied", "denied"]
    settled, no_credits, no_model = requests
    for r in requests:
        assert r.keys() >= REQUIRED, REQUIRED - r.keys()
        assert r["account"] == "acme" and r["key_id"] == "key_0"

    record = core.ledger.records[0]
    assert settled["request_id"] == record.request_id and settled["request_id"].startswith("req_")
    assert settled["decision"] == "allowed" and settled["code"] == "ok" and settled["status"] == "ok"
    assert settled["model"] == "deepseek/deepseek-v4-flash"
    assert settled["micro_credits"] == record.credits > 0 and Decimal(settled["credits"]) * 1_000_000 == record.credits
    assert settled["input_tokens"] == 12 and settled["output_tokens"] == 7 and settled["estimated"] is False
    assert isinstance(settled["latency_ms"], int)

    assert no_credits["decision"] == "denied" and no_credits["code"] == "insufficient_credits"
    assert no_credits["model"] == "deepseek/deepseek-v4-flash" and no_credits["trace_id"] == "trace-9"
    assert Decimal(no_credits["credits"]) == 0 and no_credits["request_id"] is None
    assert (
        no_model["code"] == "model_not_found" and no_model["model"] is None
    )  # the client's model string is not logged


async def test_request_lines_follow_the_level(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("WARNING", "json", stream=out)
    core = make_core(RequestLog())
    await run_json(core, core.keys.add("acme"), chat(), completion())
    assert out.getvalue() == ""


async def test_request_lines_written_directly_match_the_formatters_lines(captured: io.StringIO) -> None:
    """With the JSON setup, request lines skip the LogRecord (the hot path); they must read as
    any other line does: same leading keys, the same UTC millisecond timestamp format."""
    logging.getLogger("critique_sidecar.test").info("plain line")
    core = make_core(RequestLog())
    await run_json(core, core.keys.add("acme"), chat(), completion())
    plain, request = lines(captured)
    assert list(plain)[:4] == list(request)[:4] == ["ts", "level", "logger", "msg"]
    assert (
        request["level"] == "INFO"
        and request["logger"] == "critique_sidecar.requests"
        and request["msg"] == "request settled"
    )
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert stamp.match(str(plain["ts"])) and stamp.match(str(request["ts"]))


async def test_a_broken_log_stream_never_fails_a_request(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    out.close()  # e.g. stderr gone: logging reports it on its own, the request goes on
    core = make_core(RequestLog())
    charged = await run_json(core, core.keys.add("acme"), chat(), completion())
    assert charged["x-critique-credits-charged"] and len(core.ledger.records) == 1
