"""Complete ASGI responses with a body known in advance: JSON, error bodies and static files,
each carrying the request's `X-Request-Id`. Used by the HTTP front and the relay."""

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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid),
                *(extra_headers or ()),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
