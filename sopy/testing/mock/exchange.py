"""What a route handler of the mock upstream is given, and how it sends a streamed answer.

`server.MockUpstream` builds one `Exchange` per request (and per WebSocket `response.create`);
the route modules answer through it. A streamed answer honours the request's `"mock"` faults:
`chunk_delay` between parts, and `reset_after` parts before the connection drops.
"""

from collections.abc import Sequence

import attrs
import trio

from sopy.testing.mock.faults import NO_FAULTS, Faults
from sopy.testing.mock.http import Headers, MockResponse, ReceivedRequest


@attrs.frozen
class Exchange:
    """The request, its number in this mock's life, where to answer, the mock's name to echo,
    and the faults the request asked for."""

    request: ReceivedRequest
    number: int
    response: MockResponse
    upstream_name: str
    faults: Faults = NO_FAULTS


async def send_parts(
    exchange: Exchange, parts: Sequence[bytes], content_type: bytes = b"text/event-stream"
) -> None:
    """A streamed answer, one body part each (one server-sent event, or a piece of audio)."""
    await stream_parts(exchange.response, parts, exchange.faults, content_type)


async def stream_parts(
    response: MockResponse,
    parts: Sequence[bytes],
    faults: Faults,
    content_type: bytes = b"text/event-stream",
    headers: Headers = (),
) -> None:
    """`parts` as one streamed answer with `headers`, honouring `chunk_delay` and
    `reset_after`; for the chat route, which has no `Exchange`."""
    cache = [(b"cache-control", b"no-cache")] if content_type == b"text/event-stream" else []
    await response.start(200, content_type, [*cache, *headers])
    to_send = parts if faults.reset_after is None else parts[: faults.reset_after]
    for index, part in enumerate(to_send):
        if index:
            await trio.sleep(faults.chunk_delay)
        await response.send_part(part)
    if faults.reset_after is None:
        await response.finish()
    else:
        response.abandon()
