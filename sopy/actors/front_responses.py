"""Complete responses with a body known in advance: JSON, error bodies, static files and whole
upstream answers, each carrying the request's `X-Request-Id`. Used by the HTTP front and the
relay. An error is sent in the shape of the route it answers; in Anthropic's shape it also
carries the id as Anthropic's `request-id`, which the `anthropic` SDK shows as `request_id`."""

from collections.abc import Sequence
from typing import Any

import orjson

from sopy.errors import ErrorShape, SopyError
from sopy.protocol.server import HttpExchange

JSON = b"application/json"


async def send_json(
    exchange: HttpExchange,
    status: int,
    payload: Any,
    rid: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send_body(exchange, status, orjson.dumps(payload), rid, extra_headers=extra_headers)


async def send_error(
    exchange: HttpExchange, error: SopyError, shape: ErrorShape, rid: bytes
) -> None:
    headers = error.response_headers()
    if shape is ErrorShape.ANTHROPIC:
        headers.append((b"request-id", rid))
    await send_json(exchange, error.status, error.body(shape, rid.decode()), rid, headers)


async def send_body(
    exchange: HttpExchange,
    status: int,
    body: bytes,
    rid: bytes,
    content_type: bytes = JSON,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), *(extra_headers or ())]
    await send_complete(exchange, status, headers, body, rid)


async def send_complete(
    exchange: HttpExchange,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    rid: bytes,
) -> None:
    """`headers` plus Content-Length and X-Request-Id, then the whole body in one write."""
    await exchange.respond(status, [*headers, (b"x-request-id", rid)], body)
