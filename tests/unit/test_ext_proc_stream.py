"""The per-chunk path of a metered SSE stream through the ext_proc servicer: an unchanged chunk
is answered with the shared "unchanged" reply (no body sent back to Envoy), a hidden usage chunk
and the end of the stream with the body Envoy must send instead."""

from __future__ import annotations

from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from critique_sidecar.core.endpoints.openai_stream import _chunk_output, choices_bytes
from critique_sidecar.core.observe import NULL_OBSERVER
from critique_sidecar.envoy import messages as m
from critique_sidecar.envoy.ext_proc import on_response_body

from .test_metrics import MODEL, chat, make_core


def body(chunk: bytes, end: bool = False) -> pb.ProcessingRequest:
    req = pb.ProcessingRequest()
    req.response_body.body = chunk
    req.response_body.end_of_stream = end
    return req


CONTENT = b'data: {"id":"c","model":"' + MODEL.encode() + b'","choices":[{"index":0,"delta":{"content":"Retry"}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":2,"total_tokens":21}}\n\n'


async def test_unchanged_chunks_get_the_shared_reply_and_the_end_carries_the_charge() -> None:
    core = make_core(NULL_OBSERVER)
    key = core.keys.add("acme")
    x = core.exchange()
    await x.start({"authorization": f"Bearer {key}"})
    await x.admit(chat(stream=True))  # the client did not ask for usage: its chunk is hidden
    await x.response_start(200, {"content-type": "text/event-stream"})

    assert await on_response_body(x, body(CONTENT)) is m.CONTINUE_RESPONSE_BODY
    assert await on_response_body(x, body(CONTENT + CONTENT)) is m.CONTINUE_RESPONSE_BODY
    hidden = await on_response_body(x, body(USAGE))
    assert hidden.response_body.response.HasField("body_mutation")
    assert hidden.response_body.response.body_mutation.body == b""
    last = await on_response_body(x, body(CONTENT + b"data: [DONE]\n\n", end=True))
    sent = last.response_body.response.body_mutation.body
    assert sent.startswith(CONTENT + b": x-critique-request-id=") and sent.endswith(b"data: [DONE]\n\n")
    assert core.ledger.records[-1].output_tokens == 2


async def test_a_done_chunk_of_its_own_is_held_for_the_charge() -> None:
    core = make_core(NULL_OBSERVER)
    key = core.keys.add("acme")
    x = core.exchange()
    await x.start({"authorization": f"Bearer {key}"})
    await x.admit(chat(stream=True, stream_options={"include_usage": True}))  # nothing hidden
    await x.response_start(200, {"content-type": "text/event-stream"})
    assert await on_response_body(x, body(CONTENT)) is m.CONTINUE_RESPONSE_BODY
    assert await on_response_body(x, body(USAGE)) is m.CONTINUE_RESPONSE_BODY  # the client asked for it
    done = await on_response_body(x, body(b"data: [DONE]\n\n"))
    sent = done.response_body.response.body_mutation.body
    assert sent.startswith(b": x-critique-request-id=") and sent.endswith(b" estimated=false\ndata: [DONE]\n\n")
    assert b"estimated=false" in sent
    assert await on_response_body(x, body(b"", end=True)) is m.CONTINUE_RESPONSE_BODY


_TEXT = st.text(max_size=12)
_DELTA = st.dictionaries(
    st.sampled_from(["role", "content", "reasoning_content", "refusal", "tool_calls", "message"]),
    st.one_of(_TEXT, st.none(), st.integers(), st.just([{"function": {"name": "f", "arguments": "{}"}}])),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({"delta": _DELTA}), max_size=3), st.booleans())
def test_the_fast_text_count_is_the_general_one(choices: list[dict[str, Any]], as_message: bool) -> None:
    if as_message and choices:
        choices[0]["message"] = choices[0]["delta"]
    obj = {"choices": choices}
    nbytes, outputs = _chunk_output(choices)
    assert nbytes == choices_bytes(obj)
    assert outputs == sum(1 for c in choices if choices_bytes({"choices": [c]}))
