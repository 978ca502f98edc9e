"""Complete ASGI responses with a body known in advance: JSON, error bodies, static files and
whole upstream answers, each carrying the request's `X-Request-Id`. Used by the HTTP front and
the relay."""

from collections.abc import Sequence
from typing import Any

import orjson
from hypercorn.typing import ASGISendCallable

JSON = b"application/json"


async def send_json(
    send: ASGISendCallable,
    status: int,
    payload: Any,
    rid: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send_body(send, status, orjson.dumps(payload), rid, extra_headers=extra_headers)


async def send_body(
    send: ASGISendCallable,
    status: int,
    body: bytes,
    rid: bytes,
    content_type: bytes = JSON,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), *(extra_headers or ())]
    await send_complete(send, status, headers, body, rid)


async def send_complete(
    send: ASGISendCallable,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    rid: bytes,
) -> None:
    """`headers` plus Content-Length and X-Request-Id, then the whole body in one message."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
