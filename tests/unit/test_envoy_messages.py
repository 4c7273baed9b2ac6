"""envoy/messages.py: replies are filled in place; a reply must name its phase even when it changes nothing."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from critique_sidecar.envoy import messages as m


def test_an_empty_mutation_still_names_the_phase_it_answers() -> None:
    reply = pb.ProcessingResponse()
    m.fill_mutation(reply.response_body.response.header_mutation)
    # Envoy treats a reply with no phase as spurious and stops processing the stream.
    assert reply.WhichOneof("response") == "response_body"
    assert pb.ProcessingResponse.FromString(reply.SerializeToString()).WhichOneof("response") == "response_body"


def test_filled_in_place_equals_the_keyword_built_message() -> None:
    reply = pb.ProcessingResponse()
    m.fill_mutation(reply.request_headers.response.header_mutation, {"x-a": "1", "x-b": "é"}, remove=["authorization"])
    option = core_pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    expected = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(
                    set_headers=[
                        core_pb.HeaderValueOption(
                            header=core_pb.HeaderValue(key="x-a", raw_value=b"1"), append_action=option
                        ),
                        core_pb.HeaderValueOption(
                            header=core_pb.HeaderValue(key="x-b", raw_value="é".encode()), append_action=option
                        ),
                    ],
                    remove_headers=["authorization"],
                )
            )
        )
    )
    assert reply == expected
