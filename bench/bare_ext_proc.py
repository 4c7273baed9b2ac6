"""The floor of the metered design: an ext_proc servicer with no logic, for `make bench`.

Same gRPC stack as the sidecar (grpc.aio on uvloop, the same server options), same four
phases on the same envoy.yaml, and the same shape of replies (strip the key, set the model's
routing header, add a charge header), but constant: no key check, no parsing, no Redis.
Whatever the real sidecar costs above this servicer is ours; this much is the transport's.

  .venv/bin/python bench/bare_ext_proc.py --listen 127.0.0.1:9001 --model deepseek/deepseek-v4-flash
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from critique_sidecar.core.wire import MAX_RESPONSE_BODY_BYTES
from critique_sidecar.envoy.server import GRPC_MESSAGE_OVERHEAD


def _set(key: str, value: str) -> core_pb.HeaderValueOption:
    return core_pb.HeaderValueOption(
        header=core_pb.HeaderValue(key=key, raw_value=value.encode()),
        append_action=core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def replies(model: str, route_in_headers: bool = False, stream: bool = False) -> dict[str, pb.ProcessingResponse]:
    """`route_in_headers`: set the routing header in the first reply too, so the phase-count
    experiment (bench/phases.py) routes without a request-body phase. `stream`: the streaming
    benchmark's floor: the response-headers reply switches the body to STREAMED, as the sidecar
    does for SSE, and every body chunk is answered "unchanged" (what most chunks get)."""
    common = pb.CommonResponse
    first = pb.HeaderMutation(remove_headers=["authorization"])
    if route_in_headers:
        first.set_headers.append(_set("x-critique-model", model))
    response_headers = pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=common(header_mutation=pb.HeaderMutation(set_headers=[_set("x-critique-request-id", "req_0")]))
        )
    )
    if stream:
        response_headers.mode_override.response_body_mode = processing_mode_pb2.ProcessingMode.STREAMED
        return {
            "request_headers": pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common(header_mutation=first))
            ),
            "request_body": replies(model)["request_body"],
            "response_headers": response_headers,
            "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
        }
    return {
        "request_headers": pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=common(header_mutation=first, clear_route_cache=route_in_headers)
            )
        ),
        "request_body": pb.ProcessingResponse(
            request_body=pb.BodyResponse(
                response=common(
                    header_mutation=pb.HeaderMutation(set_headers=[_set("x-critique-model", model)]),
                    clear_route_cache=True,
                )
            )
        ),
        "response_headers": pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(
                response=common(header_mutation=pb.HeaderMutation(set_headers=[_set("x-critique-request-id", "req_0")]))
            )
        ),
        "response_body": pb.ProcessingResponse(
            response_body=pb.BodyResponse(
                response=common(
                    header_mutation=pb.HeaderMutation(set_headers=[_set("x-critique-credits-charged", "0.000000")])
                )
            )
        ),
    }


class BareServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, model: str, route_in_headers: bool = False, stream: bool = False) -> None:
        self._replies = replies(model, route_in_headers, stream)

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for req in request_iterator:
            yield self._replies[req.WhichOneof("request")]


class EarlyReturnServicer(BareServicer):
    """Ends the RPC (status OK) after answering the last body phase, without waiting for Envoy
    to end the request stream."""

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            yield self._replies[kind]
            if kind == "response_body" and req.response_body.end_of_stream:
                return


class ReadWriteServicer(BareServicer):
    """The same exchange with context.read()/context.write() instead of a generator."""

    async def Process(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        while True:
            req = await context.read()
            if req is grpc.aio.EOF:
                return
            await context.write(self._replies[req.WhichOneof("request")])


HANDLERS = {"iterate": BareServicer, "early-return": EarlyReturnServicer, "read-write": ReadWriteServicer}


async def serve(
    listen: str, model: str, route_in_headers: bool = False, handler: str = "early-return", stream: bool = False
) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_RESPONSE_BODY_BYTES + GRPC_MESSAGE_OVERHEAD),
        ]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(HANDLERS[handler](model, route_in_headers, stream), server)
    health_servicer = health.aio.HealthServicer()  # envoy.yaml health-checks the sidecar cluster
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen)
    await server.start()
    print(f"bare ext_proc servicer on {listen}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True)
    p.add_argument("--model", required=True)
    p.add_argument(
        "--route-in-headers", action="store_true", help="also set the routing header in the request-headers reply"
    )
    p.add_argument(
        "--handler",
        choices=sorted(HANDLERS),
        default="early-return",
        help="handler pattern (early-return: as the sidecar)",
    )
    p.add_argument(
        "--stream", action="store_true", help="answer the streaming benchmark's SSE responses chunk by chunk"
    )
    args = p.parse_args()
    uvloop.run(serve(args.listen, args.model, args.route_in_headers, args.handler, args.stream))


if __name__ == "__main__":
    main()
