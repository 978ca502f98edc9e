"""Complete responses with a body known in advance: JSON, error bodies, static files and whole
upstream answers, each carrying the request's `X-Request-Id`. Used by the HTTP front and the
relay. An error is sent in the shape of the route it answers; in Anthropic's shape it also
carries the id as Anthropic's `request-id`, which the `anthropic` SDK shows as `request_id`.

Every answer, streamed ones too, carries `x-sopy-overhead-ms`: the time Sopy itself took before
it, as `sopy.runtime.metrics` defines its overhead (`overhead_header`)."""

from collections.abc import Sequence
from typing import Any

import orjson
import trio

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
    """`headers` plus Content-Length, X-Request-Id and the overhead, then the whole body in one
    write."""
    await exchange.respond(
        status, [*headers, (b"x-request-id", rid), overhead_header(exchange)], body
    )


def overhead_header(exchange: HttpExchange) -> tuple[bytes, bytes]:
    """`x-sopy-overhead-ms`, for an answer whose head is written now: the milliseconds since the
    request head, minus those spent waiting for the request body and the upstream."""
    seconds = trio.current_time() - exchange.received_at - exchange.waited
    return (b"x-sopy-overhead-ms", b"%.3f" % (max(seconds, 0.0) * 1000))


def overhead_seconds(exchange: HttpExchange) -> float:
    """The overhead of the answer, as its header said (give or take the write); for one not
    started yet, as if it started now (the error the front is about to answer)."""
    answered_at = exchange.answered_at
    if answered_at is None:
        answered_at = trio.current_time()
    return max(answered_at - exchange.received_at - exchange.waited, 0.0)
