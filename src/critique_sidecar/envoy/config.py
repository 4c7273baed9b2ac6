"""Generate the Envoy config from the catalog: one cluster and one route per model.

`critique-sidecar envoy-config > envoy.yaml` is how the committed envoy.yaml is made; a test
fails when they differ, so the catalog stays the one source of truth for routes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from ..core.catalog import Catalog
from ..core.errors import error_body
from ..core.scopes import CHAT_PATH, DASHBOARD_PATH, KEYS_PATH, MODELS_PATH, SETTINGS_PATH
from ..core.wire import HEADER_PREFIX, MAX_REQUEST_BODY_BYTES, MODEL_HEADER

EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"
BUFFER = "envoy.filters.http.buffer"
# What the ext_proc stream needs to see of the request (key, trace id) and response (status,
# type, encoding), besides the x-critique-* prefix.
FORWARDED_HEADERS = ("authorization", "x-request-id", ":status", "content-type", "content-encoding")
# Largest non-streaming response Envoy buffers for metering, and the largest piece of a
# stream it hands the sidecar in one message: this bounds the sidecar's memory per stream.
UPSTREAM_BUFFER_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class EnvoyOptions:
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9901"
    sidecar_grpc: tuple[str, ...] = ("127.0.0.1:9001",)
    sidecar_http: str = "127.0.0.1:9002"
    # "ext_proc": authorise inside the one ext_proc stream on the chat route (one gRPC stream
    # per request); "ext_authz": ext_authz and ext_proc both run (two streams).
    chat_auth: str = "ext_proc"
    max_request_bytes: int = MAX_REQUEST_BODY_BYTES
    # Past this Envoy answers 503 itself; the sidecar's own Redis timeout (0.5 s) fails first.
    sidecar_timeout_ms: int = 2000
    upstream_timeout_s: int = 600


def _addr(hostport: str) -> dict[str, Any]:
    host, _, port = hostport.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _cluster(
    name: str, endpoints: list[str], *, http2: bool = False, buffer_bytes: int | None = None
) -> dict[str, Any]:
    # Envoy refuses a STATIC cluster with a host name ("vllm.internal:8000", a Kubernetes
    # Service): those are resolved, and re-resolved, by DNS.
    static = all(_is_ip(e.rpartition(":")[0]) for e in endpoints)
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(e)}} for e in endpoints]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if buffer_bytes:
        c["per_connection_buffer_limit_bytes"] = buffer_bytes
    return c


def _per_filter(*, authz: bool, proc: bool, buffer: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not authz:
        out[EXT_AUTHZ] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": True,
        }
    if proc:  # ext_proc is off unless a route turns it on (see build_config)
        out[EXT_PROC] = {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "overrides": {},
            },
        }
    else:
        out[EXT_PROC] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        }
    if not buffer:
        out[BUFFER] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "disabled": True,
        }
    return out


def _json_reply(status: int, code: str, message: str) -> dict[str, Any]:
    """A route answered by Envoy itself, in the product's JSON error shape."""
    return {
        "direct_response": {"status": status, "body": {"inline_string": error_body(code, message).decode()}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


# Envoy's response flags for a model server that refused the connection, closed it or reset
# the stream before answering. Envoy says 503 for these; the client is told 502 upstream_error,
# so "the model server failed" is never mistaken for "our store is down".
UPSTREAM_FAILURE_FLAGS = ("UF", "UC", "UR", "URX")


def _local_reply_mapper(
    status: int, code: str, message: str, new_status: int | None = None, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    status_filter = {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"critique.local_reply.{status}"},
            }
        }
    }
    mapper: dict[str, Any] = {
        "filter": {"and_filter": {"filters": [status_filter, {"response_flag_filter": {"flags": list(flags)}}]}}
        if flags
        else status_filter,
        "body": {"inline_string": error_body(code, message).decode()},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    if new_status:
        mapper["status_code"] = new_status
    return mapper


def build_config(catalog: Catalog, opts: EnvoyOptions = EnvoyOptions()) -> dict[str, Any]:
    if opts.chat_auth not in ("ext_proc", "ext_authz"):
        raise ValueError("chat_auth must be 'ext_proc' or 'ext_authz'")
    chat_filters = _per_filter(authz=opts.chat_auth == "ext_authz", proc=True, buffer=True)
    app_filters = _per_filter(authz=True, proc=False, buffer=False)
    timeout = f"{opts.sidecar_timeout_ms / 1000:g}s"

    too_large = f"Request body exceeds {opts.max_request_bytes} bytes"
    # A body announced larger than the limit is refused from its headers alone, at once: the
    # buffer filter would otherwise wait for the bytes (a slow client holds the request open
    # until the idle timeout). Bodies without a Content-Length meet the buffer filter's 413.
    routes: list[dict[str, Any]] = [
        {
            "name": "chat_body_too_large",
            "match": {
                "path": CHAT_PATH,
                "headers": [
                    {"name": "content-length", "range_match": {"start": opts.max_request_bytes + 1, "end": 2**62}}
                ],
            },
            **_json_reply(413, "request_too_large", too_large),
            "typed_per_filter_config": _per_filter(authz=False, proc=False, buffer=False),
        }
    ]
    for model in catalog.models:
        routes.append(
            {
                "name": f"chat_{model.upstream.cluster}",
                "match": {
                    "path": CHAT_PATH,
                    "headers": [{"name": MODEL_HEADER, "string_match": {"exact": model.id}}],
                },
                "route": {
                    "cluster": model.upstream.cluster,
                    "timeout": f"{opts.upstream_timeout_s}s",
                    "idle_timeout": "120s",
                },
                "request_headers_to_remove": [MODEL_HEADER],
                "typed_per_filter_config": chat_filters,
            }
        )
    # Before ext_proc has read the body there is no model header yet: this route carries the
    # chat filter settings. Reaching its direct response means no model route matched.
    routes.append(
        {
            "name": "chat_unrouted",
            "match": {"path": CHAT_PATH},
            **_json_reply(503, "service_unavailable", "The request could not be routed to a model"),
            "typed_per_filter_config": chat_filters,
        }
    )
    for prefix in (MODELS_PATH, SETTINGS_PATH, DASHBOARD_PATH, KEYS_PATH):
        routes.append(
            {
                "match": {"path": prefix},
                "route": {"cluster": "sidecar_http", "timeout": "10s"},
                "typed_per_filter_config": app_filters,
            }
        )
    routes.append(
        {
            "match": {"path": "/inference-dashboard"},
            "route": {"cluster": "sidecar_http", "timeout": "10s"},
            "typed_per_filter_config": _per_filter(authz=False, proc=False, buffer=False),
        }
    )
    routes.append(
        {
            "match": {"prefix": "/"},
            **_json_reply(404, "not_found", "No such route"),
            "typed_per_filter_config": _per_filter(authz=False, proc=False, buffer=False),
        }
    )

    grpc_service = {"envoy_grpc": {"cluster_name": "sidecar_grpc"}, "timeout": timeout}
    http_filters = [
        {
            "name": EXT_AUTHZ,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "grpc_service": grpc_service,
                "transport_api_version": "V3",
                "failure_mode_allow": False,
                "status_on_error": {"code": 503},
            },
        },
        {
            "name": BUFFER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": opts.max_request_bytes,
            },
        },
        {
            "name": EXT_PROC,
            # Off by default, on only where a route enables it (the chat routes). A reply Envoy
            # makes before any route is chosen (431 for oversized headers, 400 for a malformed
            # request) otherwise waited on ext_proc until the connection closed: the client
            # got an empty reply instead of the error.
            "disabled": True,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": grpc_service,
                "failure_mode_allow": False,
                "message_timeout": timeout,
                "allow_mode_override": True,
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "request_body_mode": "BUFFERED",
                    "response_header_mode": "SEND",
                    "response_body_mode": "BUFFERED",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
                "metadata_options": {"forwarding_namespaces": {"untyped": [EXT_AUTHZ]}},
                # Only the headers the exchange reads (core/exchange.py): less for Envoy to
                # serialise and us to parse on every request, and no cookies or other client
                # headers ever reach the sidecar. Every x-critique-* header is still seen (and
                # stripped); removals need no forwarding.
                "forward_rules": {
                    "allowed_headers": {
                        "patterns": [{"exact": h} for h in FORWARDED_HEADERS] + [{"prefix": HEADER_PREFIX}]
                    }
                },
                "status_on_error": {"code": 503},
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "request_timeout": "300s",
        "stream_idle_timeout": "120s",
        "route_config": {
            "name": "critique",
            "virtual_hosts": [{"name": "critique", "domains": ["*"], "routes": routes}],
        },
        "http_filters": http_filters,
        # Envoy's own error replies (body too large, sidecar or upstream unreachable, timeouts)
        # in the product's JSON error shape.
        "local_reply_config": {
            "mappers": [
                _local_reply_mapper(413, "request_too_large", too_large),
                # Envoy's own (the sidecar never answers 431). No 400 mapper: it would also
                # replace the sidecar's specific invalid_request messages.
                _local_reply_mapper(431, "invalid_request", "Request headers are too large or too many"),
                _local_reply_mapper(
                    500, "service_unavailable", "The metering service is unavailable; retry shortly", 503
                ),
                _local_reply_mapper(
                    503, "upstream_error", "The model server failed to answer", 502, flags=UPSTREAM_FAILURE_FLAGS
                ),
                _local_reply_mapper(503, "service_unavailable", "The service is unavailable; retry shortly"),
                _local_reply_mapper(502, "upstream_error", "The model server failed to answer"),
                _local_reply_mapper(504, "upstream_timeout", "The model server timed out"),
            ]
        },
    }

    sidecar_grpc = _cluster("sidecar_grpc", list(opts.sidecar_grpc), http2=True)
    sidecar_grpc["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
    clusters = [sidecar_grpc, _cluster("sidecar_http", [opts.sidecar_http])]
    seen = set()
    for model in catalog.models:
        u = model.upstream
        if u.cluster not in seen:
            seen.add(u.cluster)
            clusters.append(_cluster(u.cluster, [f"{u.host}:{u.port}"], buffer_bytes=UPSTREAM_BUFFER_BYTES))

    return {
        "admin": {"address": _addr(opts.admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "critique",
                    "address": _addr(opts.listen),
                    "per_connection_buffer_limit_bytes": opts.max_request_bytes + 65536,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


HEADER = "# Generated by `critique-sidecar envoy-config` from the model catalog. Do not edit by hand:\n# change catalog.toml (or the options) and regenerate; a test checks this file is current.\n"


def render(catalog: Catalog, opts: EnvoyOptions = EnvoyOptions()) -> str:
    # Round-trip through JSON so YAML gets plain types only.
    data = orjson.loads(orjson.dumps(build_config(catalog, opts)))
    return HEADER + yaml.safe_dump(data, sort_keys=False, width=120)
