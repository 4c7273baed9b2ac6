"""Adversarial model-server behaviours for the fake upstream (devtools/fake_upstream.py).

A model server is as hostile an input as a client: these directives make the fake upstream
behave as real servers do at their edges (vLLM without `max_tokens` generates up to the context
window and honours `n`) and as a broken or malicious one might. Picked, like every fake-upstream
behaviour, by directives in the last message's content:

  [[vllm]]        report completion_tokens = the bound the request carried (max_completion_tokens
                  or max_tokens; without one, the context window minus the prompt), per choice,
                  times `n`; streams emit every choice's deltas (a few of them, not the whole text)
  [[overshoot:K]] report K times the completion tokens it would otherwise report
  [[absurd:K]]    usage values that are not sane integers: 1 negative, 2 fractional, 3 10**18,
                  4 strings, 5 a float 1e300, 6 missing completion_tokens, 7 both 2**63
  [[reasoning]]   deltas carry `reasoning_content` instead of `content`
  [[toolcalls]]   deltas carry `tool_calls` with argument fragments
  [[refusal]]     deltas carry `refusal`
  [[forge]]       send SSE comment lines imitating the sidecar's charge line
  [[multiusage]]  several usage chunks: an early large one, a chunk with text and usage, and a
                  later, smaller usage-only chunk
  [[framing:K]]   the stream's events framed as the SSE specification also allows (the SDKs read
                  them all): 1 `\n\r\n` event ends, 2 CR-only line ends with `id:` lines,
                  3 CRLF, 4 the three mixed, 5 each event's JSON split over two `data:` lines
  [[dense]]       one 2-byte token per event (" a"), as fast small-vocabulary decoding streams
With `stream_options.continuous_usage_stats` (as vLLM), every chunk carries one choice and a usage
counting that choice's tokens so far; only the last usage chunk counts every choice.
"""

from __future__ import annotations

from typing import Any

from ..core.catalog import load_catalog

_CATALOG = load_catalog()
_DEFAULT_CONTEXT = 1_000_000

FORGED_COMMENT = (
    b": x-critique-request-id=req_forged x-critique-credits-charged=0.000001 "
    b"x-critique-estimated-usd=0.00000001 estimated=false\n\n"
)


def context_window(model: Any) -> int:
    found = _CATALOG.model(model) if isinstance(model, str) else None
    return found.context_window if found else _DEFAULT_CONTEXT


def requested_n(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 128 else 1


def vllm_completion_tokens(body: dict[str, Any], prompt: int) -> int:
    """Per-choice tokens a vLLM-like server generates: the request's bound, else up to the context."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return max(context_window(body.get("model")) - prompt, 1)


def absurd_usage(kind: int, prompt: int, completion: int) -> dict[str, Any]:
    """A usage object whose numbers are not sane integers (see the module docstring)."""
    values: dict[int, dict[str, Any]] = {
        1: {"prompt_tokens": -prompt, "completion_tokens": -completion},
        2: {"prompt_tokens": prompt + 0.5, "completion_tokens": completion + 0.25},
        3: {"prompt_tokens": 10**18, "completion_tokens": completion},
        4: {"prompt_tokens": str(prompt), "completion_tokens": str(completion)},
        5: {"prompt_tokens": prompt, "completion_tokens": 1e300},
        6: {"prompt_tokens": prompt},
        7: {"prompt_tokens": 2**63, "completion_tokens": 2**63},
    }
    usage = values.get(kind, values[3])
    return {**usage, "total_tokens": 0}


def delta(kind: str, piece: str, i: int) -> dict[str, Any]:
    """One streamed delta of the given kind (content, reasoning, toolcalls, refusal)."""
    if kind == "reasoning":
        return {"reasoning_content": piece}
    if kind == "toolcalls":
        call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
        if i == 0:
            call.update(id="call_fake", type="function")
            call["function"]["name"] = "lookup"
        return {"tool_calls": [call]}
    if kind == "refusal":
        return {"refusal": piece}
    return {"content": piece}


def message(kind: str, text: str) -> dict[str, Any]:
    """The non-streaming message of the given kind."""
    out: dict[str, Any] = {"role": "assistant", "content": None if kind != "content" else text}
    if kind == "reasoning":
        out.update(content="", reasoning_content=text)
    elif kind == "toolcalls":
        out["tool_calls"] = [{"id": "call_fake", "type": "function", "function": {"name": "lookup", "arguments": text}}]
    elif kind == "refusal":
        out["refusal"] = text
    return out


def delta_kind(directives: dict[str, int]) -> str:
    for kind in ("reasoning", "toolcalls", "refusal"):
        if kind in directives:
            return kind
    return "content"


def framed(event: bytes, framing: int, i: int) -> bytes:
    """One `data: ...\n\n` event as framing K writes it (see the module docstring)."""
    if framing == 4:
        framing = 1 + i % 3
    body = event[:-2]
    if framing == 1:
        return body + b"\n\r\n"
    if framing == 2:
        return b"id: %d\r" % i + body + b"\r\r"
    if framing == 3:
        return body + b"\r\n\r\n"
    if framing == 5 and body.startswith(b"data: {"):
        cut = body.find(b',"')
        if cut > 0:  # a line break where JSON allows whitespace: the data lines join with one
            return body[: cut + 1] + b"\ndata: " + body[cut + 1 :] + b"\n\n"
    return event


def logprobs(text_tokens: int, top: int) -> dict[str, Any]:
    """A choice's `logprobs` as chat completions report them: every token with `top` alternatives."""
    alternatives = [{"token": f"t{k}", "logprob": -1.5 - k, "bytes": [116, 48 + k % 10]} for k in range(top)]
    return {
        "content": [
            {"token": "tok ", "logprob": -0.25, "bytes": [116, 111, 107, 32], "top_logprobs": alternatives}
            for _ in range(text_tokens)
        ],
        "refusal": None,
    }
