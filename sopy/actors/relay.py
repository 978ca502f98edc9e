"""One proxied request, from the HTTP front's side: hand it to the model's provider pool, fall
back to the mapping's next provider if that one cannot answer, relay the answer to the client as
it arrives and cancel the upstream work if the client leaves. `log_access` writes the request's
one log line.

A provider "cannot answer" when its pool reports `UpstreamFailed`, or relays a final 429/5xx
(`ResponseStart.retryable`) while another provider is still left to try. Nothing has been sent
to the client at that point, so falling back is invisible to it.
"""

import logging

import attrs
import orjson
import trio

from sopy.actors.front_responses import send_complete, send_json
from sopy.actors.upstream_pool import UpstreamPools
from sopy.errors import NoBackendAvailable, SopyError, UpstreamError
from sopy.messages import (
    ForwardRequest,
    ProviderRoute,
    ResponseChunk,
    ResponseEnd,
    ResponseStart,
    UpstreamEvent,
    UpstreamFailed,
)
from sopy.protocol.server import HttpExchange
from sopy.routing.forwarded_headers import upstream_request_headers
from sopy.runtime.channel_send import deliver

log = logging.getLogger(__name__)
access_log = logging.getLogger("sopy.access")

RELAY_BUFFER = 32
CLIENT_CLOSED_REQUEST = 499
_POOL_STOPPED = UpstreamFailed(
    UpstreamError("the upstream pool stopped while handling this request; retry it")
)


@attrs.define
class ProxiedRequest:
    """What the relay knows about one request, for cancelling it and for its log line."""

    rid: bytes
    key_id: int | None = None
    model: str = "-"
    began: float = attrs.field(factory=trio.current_time)
    forward: ForwardRequest | None = None
    provider: str | None = None
    backend: str | None = None
    attempts: int = 0
    status: int = 0
    upstream_seconds: float = 0.0
    finished: bool = False


async def proxy(
    pools: UpstreamPools,
    routes: tuple[ProviderRoute, ...],
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_client_leaves, exchange, request, nursery.cancel_scope)
        first, events = await _first_answer(pools, routes, request, exchange, body)
        with events:
            await _pump(first, events, exchange, request)
        nursery.cancel_scope.cancel()


async def _first_answer(
    pools: UpstreamPools,
    routes: tuple[ProviderRoute, ...],
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> tuple[UpstreamEvent, trio.MemoryReceiveChannel[UpstreamEvent]]:
    for index, route in enumerate(routes):
        sent_at = trio.current_time()
        events = await _forward(pools, route, request, exchange, body)
        first = await _next_event(events)
        request.upstream_seconds = trio.current_time() - sent_at
        _note_answer(request, route, first)
        if index + 1 < len(routes) and _provider_could_not_answer(first):
            log.info(
                "request %s: provider '%s' could not answer; falling back to '%s'",
                request.rid.decode(),
                route.provider,
                routes[index + 1].provider,
            )
            forward = request.forward
            if forward is not None:
                forward.cancel_scope.cancel()
            events.close()
            continue
        return first, events
    raise AssertionError("routes_for never returns an empty tuple")


async def _forward(
    pools: UpstreamPools,
    route: ProviderRoute,
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> trio.MemoryReceiveChannel[UpstreamEvent]:
    events_send, events = trio.open_memory_channel[UpstreamEvent](RELAY_BUFFER)
    forward = ForwardRequest(
        request_id=request.rid.decode(),
        method=exchange.method,
        path=exchange.target,
        headers=upstream_request_headers(exchange.headers),
        body=body,
        route=route,
        cancel_scope=trio.CancelScope(),
        reply_to=events_send,
    )
    request.forward = forward
    try:
        await deliver(pools.inbox_for(route.provider), forward)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        _fail_now(
            events_send,
            NoBackendAvailable(
                f"provider '{route.provider}' was just removed from the configuration"
            ),
        )
    except NoBackendAvailable as error:  # the pools are restarting
        _fail_now(events_send, error)
    return events


def _fail_now(events: trio.MemorySendChannel[UpstreamEvent], error: SopyError) -> None:
    events.send_nowait(UpstreamFailed(error))
    events.close()


def _provider_could_not_answer(first: UpstreamEvent) -> bool:
    return isinstance(first, UpstreamFailed) or (
        isinstance(first, ResponseStart) and first.retryable
    )


def _note_answer(request: ProxiedRequest, route: ProviderRoute, first: UpstreamEvent) -> None:
    request.provider = route.provider
    if isinstance(first, ResponseStart | UpstreamFailed):
        request.status = first.status if isinstance(first, ResponseStart) else first.error.status
        request.backend, request.attempts = first.backend, first.attempts


async def _cancel_when_client_leaves(
    exchange: HttpExchange, request: ProxiedRequest, relay_scope: trio.CancelScope
) -> None:
    await exchange.wait_client_gone()
    if not request.finished:
        log.info("request %s: client went away; cancelling upstream", request.rid.decode())
        request.status = CLIENT_CLOSED_REQUEST
        if request.forward is not None:
            request.forward.cancel_scope.cancel()
        relay_scope.cancel()


async def _pump(
    start: UpstreamEvent,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    if isinstance(start, UpstreamFailed):
        request.finished = True
        error = start.error
        await send_json(
            exchange, error.status, error.openai_body(), request.rid, error.response_headers()
        )
        return
    assert isinstance(start, ResponseStart), start
    if start.body is not None:
        request.finished = True
        await send_complete(exchange, start.status, start.headers, start.body, request.rid)
        return
    await _relay_stream(start, events, exchange, request)


async def _relay_stream(
    start: ResponseStart,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    """Relay an event stream; chunks already waiting go out in one write with what precedes
    them (the head included), so a burst from the upstream costs one write, not one each."""
    ready, end = _take_ready(events)
    head = [*start.headers, (b"x-request-id", request.rid)]
    await exchange.start_response(start.status, head, ready)
    while end is None:
        event = await _next_event(events)
        if isinstance(event, ResponseChunk):
            ready, end = _take_ready(events)
            await exchange.send_chunk(event.data + ready)
        else:
            end = event
    # Only event streams are relayed piecemeal, so a failure ends as a final SSE event.
    error = end.error if isinstance(end, ResponseEnd) else "the upstream pool stopped"
    request.finished = True
    await exchange.end_response(b"" if error is None else _sse_error_event(error))


def _take_ready(
    events: trio.MemoryReceiveChannel[UpstreamEvent],
) -> tuple[bytes, UpstreamEvent | None]:
    """The chunks already waiting in `events`, joined, and the event after them if it is
    waiting too."""
    pieces: list[bytes] = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return b"".join(pieces), None
        except trio.EndOfChannel:
            return b"".join(pieces), _POOL_STOPPED
        if not isinstance(event, ResponseChunk):
            return b"".join(pieces), event
        pieces.append(event.data)


async def _next_event(events: trio.MemoryReceiveChannel[UpstreamEvent]) -> UpstreamEvent:
    try:
        return await events.receive()
    except trio.EndOfChannel:
        return _POOL_STOPPED


def _sse_error_event(message: str) -> bytes:
    body = UpstreamError(message).openai_body()
    return b"data: " + orjson.dumps(body) + b"\n\n"


def log_access(request: ProxiedRequest) -> None:
    """The one `sopy.access` line for a /v1 request; never a key or a credential."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
        "request %s key=%s model=%s provider=%s backend=%s status=%d upstream_ms=%.1f "
        "attempts=%d total_ms=%.1f",
        request.rid.decode(),
        request.key_id if request.key_id is not None else "-",
        request.model,
        request.provider or "-",
        request.backend or "-",
        request.status,
        request.upstream_seconds * 1000,
        request.attempts,
        (trio.current_time() - request.began) * 1000,
    )
