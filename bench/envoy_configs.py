"""Envoy configs the benchmark generates itself: the fast upstream and the plain gateway.

Both are plain dicts written as YAML, so each knob that matters is visible here with its reason."""

from __future__ import annotations

import json
from typing import Any

MODEL = "deepseek/deepseek-v4-flash"

# What a model server answers to the benchmark's request: a realistic non-streaming completion
# with usage, so the metered path parses and prices a real body.
CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench000000000000000000000001",
    "object": "chat.completion",
    "created": 1767225600,
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "- Retries up to 3 times on 429 and 5xx.\n"
                "- Waits with exponential backoff and jitter between attempts.\n"
                "- Gives up and surfaces the last error after the final attempt.",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 19, "completion_tokens": 41, "total_tokens": 60},
}

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _bootstrap(
    name: str,
    port: int,
    admin_port: int,
    routes: list[dict[str, Any]],
    http_filters: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
        "http_filters": [*http_filters, ROUTER],
    }
    listener = {
        "name": name,
        "address": _address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def fast_upstream(port: int, admin_port: int) -> dict[str, Any]:
    """A model server that costs almost nothing: Envoy answering every request with a fixed completion.

    The buffer filter makes Envoy read the whole request body before answering; a direct_response
    sent while the body is still arriving makes Envoy close the connection, so every request would
    pay for a new TCP connection and the benchmark would measure connects, not the gateway."""
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 1048576,
        },
    }
    route = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 200,
            "body": {"inline_string": json.dumps(CHAT_COMPLETION, separators=(",", ":"))},
        },
        # direct_response bodies are text/plain otherwise; a model server says JSON.
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    return _bootstrap("fast_upstream", port, admin_port, [route], [buffer], [])


def plain_gateway(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """The baseline: Envoy with only the router, proxying chat completions to the upstream."""
    route = {"match": {"path": "/api/v1/chat/completions"}, "route": {"cluster": "upstream", "timeout": "60s"}}
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}],
        },
    }
    return _bootstrap("plain", port, admin_port, [route], [], [cluster])
