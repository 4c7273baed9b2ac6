"""The endpoint seam (core/endpoints/): the registry, and the Responses API, legacy completions
and embeddings as their modules define them (chat: test_endpoint_chat.py). Bounds, the body the
upstream gets, where usage lives in a JSON response and in a stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from critique_sidecar.core.catalog import Catalog, load_catalog
from critique_sidecar.core.endpoints import ENDPOINTS, NAMES, by_path, completions, embeddings, not_served, responses
from critique_sidecar.core.endpoints.base import TERMINAL, Limits, StreamTally
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.sse import SseMeter
from critique_sidecar.core.tokens import TokenCounts
from critique_sidecar.devtools.stack import demo_catalog_text

DEEPSEEK = "deepseek/deepseek-v4-flash"
EMBED = "example/text-embedding-small"


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Limits:
    """The demo's catalog: the built-in one and the example embeddings model."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(demo_catalog_text())
    return Limits(load_catalog(path))


def body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def refused(parse: Any, raw: bytes, limits: Limits) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse(raw, limits)
    return err.value


# -- the registry ---------------------------------------------------------------------------------


def test_every_endpoint_is_one_registry_line_with_a_path_and_a_suffix() -> None:
    assert NAMES == ("chat.completions", "responses", "completions", "embeddings", "messages")
    for e in ENDPOINTS:
        assert by_path(e.path) is e and by_path(e.path + "?x=1") is e
        assert e.path == "/api/v1" + e.suffix  # the product path maps onto a base URL by its suffix
    assert by_path("/api/v1/chat/completions/") is None and by_path("/api/v1/files") is None


def test_nothing_else_under_the_api_is_served() -> None:
    assert "Stored responses" in (not_served("/api/v1/responses/resp_1") or "")
    assert "Stored responses" in (not_served("/api/v1/responses/resp_1/cancel") or "")
    assert "No such endpoint" in (not_served("/api/v1/files") or "")
    assert not_served("/api/v2/x") is None and not_served("/inference-dashboard") is None


def test_a_model_asked_for_an_endpoint_it_does_not_serve_is_a_404_naming_it(limits: Limits) -> None:
    err = refused(embeddings.parse, body(model=DEEPSEEK, input="x"), limits)
    assert (err.code, err.status, err.param) == ("model_not_found", 404, "model")
    assert "does not serve embeddings" in err.message
    err = refused(responses.parse, body(model=EMBED, input="x"), limits)
    assert "does not serve responses" in err.message


# -- the Responses API ------------------------------------------------------------------------------


def test_responses_bound_and_stateless_body(limits: Limits) -> None:
    raw = body(model=DEEPSEEK, input="Summarize this.")
    req = responses.parse(raw, limits)
    assert req.per_generation == 32_768 and req.body["max_output_tokens"] == 32_768  # inserted
    assert req.body["store"] is False and req.changed  # nothing is kept on the model server
    assert req.input_bound == len(raw) + 16
    clamped = responses.parse(body(model=DEEPSEEK, input="x", max_output_tokens=10**6, store=False), limits)
    assert clamped.body["max_output_tokens"] == 32_768


@pytest.mark.parametrize(
    "field, value",
    [("previous_response_id", "resp_1"), ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"}),
     ("background", True), ("store", True)],
)  # fmt: skip
def test_responses_with_state_on_the_server_are_refused(limits: Limits, field: str, value: Any) -> None:
    """Input the body does not hold cannot be bounded by it, and a stored response could be read
    back by another account: refused before any hold, naming the field."""
    err = refused(responses.parse, body(model=DEEPSEEK, input="x", **{field: value}), limits)
    assert (err.code, err.param) == ("invalid_request", field)


@pytest.mark.parametrize("value", [None, "", [], 3, {"x": 1}])
def test_responses_need_an_input(limits: Limits, value: Any) -> None:
    assert refused(responses.parse, body(model=DEEPSEEK, input=value), limits).param == "input"


def test_responses_with_an_image_hold_the_context_window(limits: Limits) -> None:
    item = {"role": "user", "content": [{"type": "input_image", "image_url": "https://i.example/x.png"}]}
    assert responses.parse(body(model=DEEPSEEK, input=[item]), limits).input_bound == 1_000_000


def test_responses_usage_counts_cached_and_reasoning_as_parts() -> None:
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40}, "output_tokens": 30,
             "output_tokens_details": {"reasoning_tokens": 12}}  # fmt: skip
    assert responses.usage({"usage": usage}) == TokenCounts(100, 30, cached_input_tokens=40, reasoning_tokens=12)
    assert responses.usage({"usage": {"input_tokens": 1}}) is None and responses.usage(None) is None
    obj = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "héllo"}]},
                      {"type": "function_call", "name": "f", "arguments": '{"a":1}'},
                      {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]}]}  # fmt: skip
    assert responses.output_bytes(obj) == 6 + 1 + 7 + 2 and responses.output_text(obj) == "héllo"


def responses_event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def test_a_responses_stream_is_metered_and_its_last_event_held_for_the_charge() -> None:
    meter = SseMeter(responses.ResponsesStream(), StreamTally())
    usage = {"input_tokens": 9, "output_tokens": 3}
    parts = [
        responses_event("response.created", response={"id": "r"}),
        *(responses_event("response.output_text.delta", delta=d) for d in ("a", "bb", "ccc")),
        responses_event("response.function_call_arguments.delta", delta="{}"),
        responses_event("response.output_text.done", text="abbccc"),
    ]
    completed = responses_event("response.completed", response={"id": "r", "usage": usage})
    assert meter.feed(b"".join(parts)) == b"".join(parts)
    assert meter.feed(completed) == b"" and meter.done  # held: the charge goes first
    assert meter.tally.usage == TokenCounts(9, 3) and meter.tally.final
    assert meter.tally.output_bytes == 1 + 2 + 3 + 2 and meter.tally.text_events == 4  # .done is not counted twice
    assert meter.finish() == completed


@pytest.mark.parametrize("last", ["response.incomplete", "response.failed"])
def test_every_last_responses_event_carries_the_usage(last: str) -> None:
    reader = responses.ResponsesStream()
    tally = StreamTally()
    data = orjson.dumps({"type": last, "response": {"usage": {"input_tokens": 5, "output_tokens": 2}}})
    assert reader.event(last.encode(), data, tally) == TERMINAL and tally.usage == TokenCounts(5, 2)


# -- legacy completions --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completions_take_every_prompt_shape(limits: Limits, prompt: Any) -> None:
    raw = body(model=DEEPSEEK, prompt=prompt, max_tokens=5)
    req = completions.parse(raw, limits)
    assert req.input_bound == len(raw) + 16 and req.output_bound == 5 and not req.changed


@pytest.mark.parametrize("prompt", [None, [], [1, "a"], [[1], ["a"]], [-1], 5, [True]])
def test_completions_refuse_other_prompts(limits: Limits, prompt: Any) -> None:
    assert refused(completions.parse, body(model=DEEPSEEK, prompt=prompt), limits).param == "prompt"


def test_completions_insert_the_apis_own_default_bound(limits: Limits) -> None:
    """Without max_tokens the API generates 16 tokens: that is what is held and inserted, not the
    model's whole budget."""
    req = completions.parse(body(model=DEEPSEEK, prompt="x"), limits)
    assert req.body["max_tokens"] == 16 and req.output_bound == 16 and req.changed


def test_completions_hold_every_candidate_best_of_generates(limits: Limits) -> None:
    req = completions.parse(body(model=DEEPSEEK, prompt="x", max_tokens=100, n=2, best_of=5), limits)
    assert (req.generations, req.output_bound) == (5, 500)
    assert refused(completions.parse, body(model=DEEPSEEK, prompt="x", n=3, best_of=2), limits).param == "best_of"
    assert refused(completions.parse, body(model=DEEPSEEK, prompt="x", best_of=9), limits).param == "best_of"
    err = refused(completions.parse, body(model=DEEPSEEK, prompt="x", best_of=2, stream=True), limits)
    assert err.param == "best_of"


def test_completion_streams_ask_for_usage_and_hide_it_unless_asked(limits: Limits) -> None:
    req = completions.parse(body(model=DEEPSEEK, prompt="x", max_tokens=4, stream=True), limits)
    assert req.body["stream_options"] == {"include_usage": True} and req.hide_usage


# -- embeddings ------------------------------------------------------------------------------------------


def test_embeddings_are_held_for_input_only(limits: Limits) -> None:
    raw = body(model=EMBED, input=["one", "two"], encoding_format="base64")
    req = embeddings.parse(raw, limits)
    assert (req.input_bound, req.output_bound, req.stream, req.changed) == (len(raw) + 16, 0, False, False)
    assert embeddings.usage({"usage": {"prompt_tokens": 7, "total_tokens": 7}}) == TokenCounts(7, 0)
    assert embeddings.usage({"data": []}) is None


@pytest.mark.parametrize(
    "fields, param",
    [({"input": "x"}, "model"), ({"model": EMBED, "input": 3}, "input"), ({"model": EMBED, "input": "x", "encoding_format": "hex"}, "encoding_format")],
)  # fmt: skip
def test_embeddings_refuse_bad_bodies(limits: Limits, fields: dict[str, Any], param: str) -> None:
    assert refused(embeddings.parse, body(**fields), limits).param == param


def test_the_demo_catalogs_models_serve_what_they_say(limits: Limits) -> None:
    catalog: Catalog = limits.catalog
    assert catalog.model(EMBED) is not None and catalog.model(EMBED).endpoints == ("embeddings",)  # type: ignore[union-attr]
