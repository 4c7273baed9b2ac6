"""Envoy's x-request-id on the sidecar's request log lines, so they join Envoy's access log.

The ext_proc servicer is registered with this deserializer: reading a stream's request headers
notes their x-request-id in a context variable of the stream's task (grpc.aio reads each message
in the handler's task), where the settled line is written (observability/logs.py)."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ..observability.logs import ENVOY_REQUEST_ID

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def read_request(data: bytes) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest.FromString(data)
    if request.HasField("request_headers"):
        for header in request.request_headers.headers.headers:
            if header.key == "x-request-id":
                ENVOY_REQUEST_ID.set(header.raw_value.decode("utf-8", "replace") or header.value)
                break
    return request


def add_ext_proc(servicer: Any, server: Any) -> None:
    """As the generated add_ExternalProcessorServicer_to_server, with read_request."""
    handlers = {
        "Process": grpc.stream_stream_rpc_method_handler(
            servicer.Process,
            request_deserializer=read_request,
            response_serializer=pb.ProcessingResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
