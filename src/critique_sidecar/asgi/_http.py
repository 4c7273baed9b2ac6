"""ASGI plumbing shared by the middleware and the reference gateway: headers, request bodies,
and the one place the ASGI front door turns a refusal (ApiError) into an HTTP response."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.types import Receive, Send

from ..core.errors import ApiError
from ..core.wire import MAX_REQUEST_BODY_BYTES

RawHeaders = list[tuple[bytes, bytes]]

MAX_BODY_BYTES = MAX_REQUEST_BODY_BYTES  # as Envoy's buffer filter, with its message


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names; a later duplicate wins (as the ext_proc translator reads Envoy's)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def joined(raw: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """Every header of one name, joined as Envoy joins repeated headers ("a,b"): two keys are
    then never a valid key, so both front doors answer 401 (never "the last one wins")."""
    wanted = name.encode("latin-1")
    values = [v.decode("latin-1") for k, v in raw if k.lower() == wanted]
    return ",".join(values) if values else None


def mutate(
    raw: Iterable[tuple[bytes, bytes]], set_headers: Mapping[str, str], remove: Iterable[str] = ()
) -> RawHeaders:
    """Drop `remove` and every name in `set_headers`, then add `set_headers` (overwrite-or-add)."""
    drop = {n.lower() for n in remove} | {n.lower() for n in set_headers}
    out = [(k, v) for k, v in raw if k.decode("latin-1").lower() not in drop]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in set_headers.items()]
    return out


def too_large(limit: int) -> ApiError:
    return ApiError("request_too_large", f"Request body exceeds {limit} bytes")


def declared_too_large(headers: Mapping[str, str], limit: int) -> bool:
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body; None if the client went away first. Past `limit`: 413."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            return bytes(body)


async def send_error(send: Send, error: ApiError) -> None:
    """The one place the ASGI front door turns an ApiError into an HTTP response
    (the same status, body and headers as Envoy's immediate response)."""
    body = error.body()
    headers = mutate([], {"content-type": "application/json", "content-length": str(len(body)), **error.headers})
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
