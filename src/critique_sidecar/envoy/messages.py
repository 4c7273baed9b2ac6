"""Builders for Envoy's ext_proc / ext_authz protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ..core.errors import ApiError

JSON = "application/json"

# Pre-built "carry on unchanged" replies, one per phase (never mutated).
CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
CONTINUE_REQUEST_TRAILERS = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def headers_of(header_map: core_pb.HeaderMap) -> dict[str, str]:
    """Envoy sends values in raw_value (bytes); later duplicates win, keys are lower-case."""
    return {h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value) for h in header_map.headers}


_OVERWRITE = core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def fill_mutation(
    target: pb.HeaderMutation, set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> pb.HeaderMutation:
    """Write header changes into a mutation that is already part of a reply. Filling fields in
    place costs about a third of building the same nested messages from keyword arguments
    (measured: 2.6 vs 7.1 us for two headers), and every metered request builds four."""
    target.SetInParent()  # present even when empty: a reply must always say which phase it answers
    if set_headers:
        add = target.set_headers.add
        for key, value in set_headers.items():
            option = add(append_action=_OVERWRITE)
            option.header.key = key
            option.header.raw_value = value.encode()  # raw_value: Envoy ignores `value` on mutations
    if remove:
        target.remove_headers.extend(remove)
    return target


def mutation(set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> pb.HeaderMutation:
    return fill_mutation(pb.HeaderMutation(), set_headers, remove)


def immediate(error: ApiError) -> pb.ProcessingResponse:
    """The one place an ext_proc denial becomes an HTTP response."""
    headers = {"content-type": JSON, **error.headers}
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=mutation(headers),
            body=error.body(),
            details=error.code,
        )
    )
