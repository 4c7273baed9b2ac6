"""ext_authz servicer: bearer key -> identity and route scope, as an Envoy Check."""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from ..core.auth import Authenticator, authorize
from ..core.endpoints import by_path, required_scopes
from ..core.endpoints.base import client_key
from ..core.errors import ApiError
from ..core.metering import new_request_id
from ..core.wire import ROUTE_PATH_CONTEXT, SDK_REQUEST_ID_HEADER, ours, spoofed
from .identity import identity_metadata
from .messages import JSON

_OK = status_pb2.Status(code=code_pb2.OK)


def denied(error: ApiError) -> pb.CheckResponse:
    """The one place an ext_authz denial becomes an HTTP response."""
    rpc_code = code_pb2.UNAUTHENTICATED if error.status == 401 else code_pb2.PERMISSION_DENIED
    headers = {"content-type": JSON, **error.headers}
    return pb.CheckResponse(
        status=status_pb2.Status(code=rpc_code, message=error.code),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=[core_pb.HeaderValueOption(header=core_pb.HeaderValue(key=k, value=v)) for k, v in headers.items()],
            body=error.body().decode(),
        ),
    )


class AuthorizationServicer(pb_grpc.AuthorizationServicer):
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        http = request.attributes.request.http
        # Under a path prefix the route says which product path it is; a client cannot set it.
        path = request.attributes.context_extensions.get(ROUTE_PATH_CONTEXT) or http.path
        needed = required_scopes(http.method, path)
        if needed is None:  # not an API route (e.g. the dashboard page): identity not needed
            return pb.CheckResponse(status=_OK, ok_response=pb.OkHttpResponse(headers_to_remove=ours(http.headers)))
        endpoint = by_path(path)
        key_headers = endpoint.key_headers if endpoint is not None else ("authorization",)
        try:
            identity = await self._auth.identify(client_key(http.headers, key_headers))
            authorize(identity, needed)
        except ApiError as error:
            if endpoint is not None:
                error.shape = endpoint.error_shape
            # Every refusal carries a request id: Envoy's for this request, else one of ours.
            error.headers.setdefault(SDK_REQUEST_ID_HEADER, http.headers.get(SDK_REQUEST_ID_HEADER) or new_request_id())
            return denied(error)
        # The model upstream never sees the key; the sidecar's own routes re-check it.
        # The request options (opt-in, end user) are for ext_proc to read, and to strip.
        remove = list(endpoint.key_headers) if endpoint is not None else []
        remove += spoofed(http.headers)
        return pb.CheckResponse(
            status=_OK,
            ok_response=pb.OkHttpResponse(headers_to_remove=remove),
            dynamic_metadata=identity_metadata(identity),
        )
