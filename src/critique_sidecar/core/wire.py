"""The wire contract: header names, what never reaches a model server, and the limits.

One module so the exchange, ext_authz, the Envoy config generator and the ASGI gateway cannot
drift apart. Transport-free: plain names and numbers."""

from __future__ import annotations

from collections.abc import Iterable

# Every header of ours starts with this. Clients may not send any (a client could otherwise
# fake the routing header or a charge), except the request options (OPTION_HEADERS), which
# the exchange reads first. No x-critique-* header ever reaches a model server.
HEADER_PREFIX = "x-critique-"
OPT_IN_HEADER = "x-critique-deepseek-training-opt-in"  # request option: "true" opts in
END_USER_HEADER = "x-critique-end-user"  # request option: the end user (core/end_user.py)
OPTION_HEADERS = (OPT_IN_HEADER, END_USER_HEADER)
MODEL_HEADER = "x-critique-model"  # set by the exchange; the proxy routes by it, then drops it

# Response headers the exchange adds.
REQUEST_ID_HEADER = "x-critique-request-id"
WARNING_HEADER = "x-critique-warning"
CREDITS_CHARGED_HEADER = "x-critique-credits-charged"
ESTIMATED_USD_HEADER = "x-critique-estimated-usd"
LIMIT_HEADER = "x-critique-limit"  # on a 402/429: the limit that refused, <scope>:<limit>

# what the SDKs read (OpenAI's names): the request id, the per-minute limits, and
# whether and when to retry a refusal (core/limits.py sets them).
SDK_REQUEST_ID_HEADER = "x-request-id"  # the same id as REQUEST_ID_HEADER
LIMIT_REQUESTS_HEADER = "x-ratelimit-limit-requests"
REMAINING_REQUESTS_HEADER = "x-ratelimit-remaining-requests"
RESET_REQUESTS_HEADER = "x-ratelimit-reset-requests"
LIMIT_TOKENS_HEADER = "x-ratelimit-limit-tokens"
REMAINING_TOKENS_HEADER = "x-ratelimit-remaining-tokens"
RESET_TOKENS_HEADER = "x-ratelimit-reset-tokens"
RETRY_AFTER_HEADER = "retry-after"
SHOULD_RETRY_HEADER = "x-should-retry"  # read by the OpenAI and Anthropic SDKs before their own rules

# the ext_authz context extension that names the product path a route serves, when
# Envoy serves it under a path prefix (ext_authz sees the client's prefixed path).
ROUTE_PATH_CONTEXT = "critique_path"

# Never forwarded upstream, besides every x-critique-* header: the client's key, and
# accept-encoding, so upstreams answer uncompressed and the body can be metered as it passes.
NEVER_UPSTREAM = ("authorization", "accept-encoding")

# Largest request body either front door accepts (413 past it).
MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024
# Largest non-streaming response either front door meters (Envoy buffers it whole, the ASGI door
# holds it for the charge headers): n choices with logprobs reach several MiB. Past it the
# response is not metered and the request is charged its hold's bound for output.
MAX_RESPONSE_BODY_BYTES = 16 * 1024 * 1024

# Seconds open requests get to finish and settle after SIGTERM (deploy/ stop timeouts cover it).
DRAIN_GRACE_S = 30


def ours(names: Iterable[str]) -> list[str]:
    """The x-critique-* names among lower-case header names."""
    return [k for k in names if k.startswith(HEADER_PREFIX)]


def spoofed(names: Iterable[str]) -> list[str]:
    """Client headers to strip before the request goes on: ours, except the request options."""
    return [k for k in ours(names) if k not in OPTION_HEADERS]
