"""One proxied request, from the HTTP front's side: hand it to the model's provider pool, fall
back to the mapping's next provider if that one cannot answer, relay the answer to the client as
it arrives and tell the pool to stop (`CancelForward`) if the client leaves. `log_access` writes
the request's one log line.

A provider "cannot answer" when its pool reports `UpstreamFailed`, or relays a final 429/5xx
(`ResponseStart.retryable`) while another provider is still left to try. Nothing has been sent
to the client at that point, so falling back is invisible to it.

The relay decides what the client sees of the upstream: which backend headers cross
(`client_response_headers`), and, for a failure, a message of the gateway's own that says what
to do and carries the request id. The pool's account of the failure names backends and causes;
it goes to the request's access log line only.

A hop to a provider whose kind does not serve the client's wire format natively
(`sopy.routing.native_routes.translation_for`) is translated (`sopy.translation.translate`):
its path and body are written in the provider's format from the client's request, read once as
items, and its answer (whole, streamed chunk by chunk, or an error) is written back in the
client's. A native hop pays nothing for this: its body goes as the client sent it. A hop whose
request the provider's format cannot express (`UntranslatableField`) is skipped for the next;
with none left, that 400 is the answer.

Every request that reached a provider also ends in a `UsageRecord` for the usage ledger
(`accounted`), with the token counts read from the answer as it is relayed
(`sopy.routing.usage_counts`), or, translated, from the provider's counts in the items.

`accounted` ends every model request with its access log line and its one entry in the
gateway's metrics (`sopy.runtime.metrics`).
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import attrs
import orjson
import trio

from sopy.actors.front_responses import (
    overhead_header,
    overhead_seconds,
    send_complete,
    send_error,
)
from sopy.errors import (
    ErrorShape,
    InvalidRequest,
    NoBackendAvailable,
    SopyError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)
from sopy.messages import (
    CancelForward,
    ForwardRequest,
    PoolMessage,
    ProviderRoute,
    ResponseChunk,
    ResponseEnd,
    ResponseStart,
    TokenCounts,
    UpstreamEvent,
    UpstreamFailed,
    UsageRecord,
)
from sopy.protocol.server import ClientGone, HttpExchange
from sopy.routing import model_field
from sopy.routing.forwarded_headers import (
    client_response_headers,
    is_event_stream,
    upstream_request_id,
)
from sopy.routing.key_limits import AdmissionHold
from sopy.routing.model_field import Span
from sopy.routing.native_routes import Translation, translation_for
from sopy.routing.response_ids import ResponseIdWatcher
from sopy.routing.usage_counts import StreamUsageWatcher, usage_of_body
from sopy.runtime.channel_send import deliver
from sopy.runtime.log_values import loggable
from sopy.runtime.metrics import UNMAPPED, GatewayMetrics
from sopy.runtime.usage_ledger import UsageLedger
from sopy.translation import translate
from sopy.translation.items import Conversation, JsonObject

log = logging.getLogger(__name__)
access_log = logging.getLogger("sopy.access")

RELAY_BUFFER = 32
# A translated hop's answer that is streamed but must be read whole (not an event stream).
MAX_WHOLE_STREAM_BYTES = 4 * 1024 * 1024
# The provider's description of a body the relay rewrites in the client's format.
_TRANSLATED_AWAY = frozenset({b"content-type", b"content-encoding", b"content-length"})
_JSON = (b"content-type", b"application/json")
_EVENT_STREAM = (b"content-type", b"text/event-stream; charset=utf-8")
# A failure's detail may list every backend of a provider: room for that, not for a flood.
MAX_LOGGED_FAILURE_CHARS = 1000
CLIENT_CLOSED_REQUEST = 499
_POOL_STOPPED = UpstreamFailed(
    UpstreamError("the upstream pool stopped while handling this request")
)

ProviderInbox = Callable[[str], trio.MemorySendChannel[PoolMessage]]
"""The inbox of provider P's pool (started on first use); raises `NoBackendAvailable` while the
pools restart. All the relay knows of the pools."""


@attrs.define
class ProxiedRequest:
    """What the relay knows about one request, for cancelling it and for its log line.
    `failure` is the pool's own account of a failure, for the log only. `error_shape` is the
    route's: the shape of the errors the gateway itself answers with."""

    rid: bytes
    # The route table template the request matched: a bounded label for the metrics.
    route: str
    error_shape: ErrorShape = ErrorShape.OPENAI
    key_id: int | None = None
    model: str = "-"
    # Whether `model` is a mapped name (only those become a metrics label).
    model_mapped: bool = False
    began: float = attrs.field(factory=trio.current_time)
    pool_inbox: trio.MemorySendChannel[PoolMessage] | None = None
    provider: str | None = None
    backend: str | None = None
    attempts: int = 0
    status: int = 0
    upstream_seconds: float = 0.0
    # Waiting for the providers' first answers, summed over the fallback hops.
    upstream_wait: float | None = None
    # A streamed answer's first body chunk relayed (trio's clock).
    first_chunk_at: float | None = None
    finished: bool = False
    failure: str | None = None
    # Set for a Responses API request: learns the id of the response relayed.
    response_ids: ResponseIdWatcher | None = None
    # Where the model lies in a multipart/form-data body; None for a JSON body until a provider
    # needs the model renamed (`upstream_body` locates it then, once).
    form_model_span: Span | None = None
    json_model_span: Span | None = None
    # What the client was sent of the backend's headers, for the log line's upstream id.
    response_headers: list[tuple[bytes, bytes]] | None = None
    # Usage: the counts of a whole answer, or the watcher of a streamed one (set with its
    # start); `strip_usage_chunk` when Sopy asked a chat stream's usage chunk itself.
    tokens: TokenCounts | None = None
    stream_usage: StreamUsageWatcher | translate.StreamTranslation | None = None
    strip_usage_chunk: bool = False
    stream_complete: bool = False
    # The key's hold on its limits' counts (`sopy.routing.key_limits`), for a key with limits.
    admission: AdmissionHold | None = None
    # The client's JSON body as the front parsed it (None for a form), for a hop that
    # translates; its items once a hop needed them; the answering hop's translation.
    payload: JsonObject | None = None
    conversation: Conversation | None = None
    translation: Translation | None = None
    # A translated Responses answer, complete: the response object the client got, for the
    # gateway to keep (`sopy.routing.kept_responses`).
    kept_response: JsonObject | None = None


@attrs.frozen
class _Hop:
    """One provider's request: its route, and the path, body and headers it gets."""

    route: ProviderRoute
    path: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    translation: Translation | None


async def proxy(
    inbox_for: ProviderInbox,
    routes: tuple[ProviderRoute, ...],
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> None:
    # Before any I/O: a request no provider's format can express is the client's error.
    hop, index = _next_hop(routes, 0, request, exchange, body)
    assert hop is not None, "_next_hop raises when not one route can take the request"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_client_leaves, exchange, request, nursery.cancel_scope)
            first, events = await _first_answer(
                inbox_for, routes, (hop, index), request, exchange, body
            )
            with events:
                await _pump(first, events, exchange, request)
            nursery.cancel_scope.cancel()
    finally:
        if not request.finished:
            _cancel_forward(request)


async def _first_answer(
    inbox_for: ProviderInbox,
    routes: tuple[ProviderRoute, ...],
    first_hop: tuple[_Hop, int],
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> tuple[UpstreamEvent, trio.MemoryReceiveChannel[UpstreamEvent]]:
    hop, index = first_hop
    while True:
        sent_at = trio.current_time()
        events = await _forward(inbox_for, hop, request, exchange)
        first = await _next_event(events)
        request.upstream_seconds = waited = trio.current_time() - sent_at
        exchange.waited += waited
        request.upstream_wait = (request.upstream_wait or 0.0) + waited
        _note_answer(request, hop, first)
        if _provider_could_not_answer(first):
            fallback, index = _next_hop(routes, index + 1, request, exchange, body)
            if fallback is not None:
                log.info(
                    "request %s: provider '%s' could not answer; falling back to '%s'",
                    request.rid.decode(),
                    hop.route.provider,
                    fallback.route.provider,
                )
                _cancel_forward(request)
                events.close()
                hop = fallback
                continue
        return first, events


def _next_hop(
    routes: tuple[ProviderRoute, ...],
    start: int,
    request: ProxiedRequest,
    exchange: HttpExchange,
    body: bytes,
) -> tuple[_Hop | None, int]:
    """The first of `routes[start:]` whose provider can be sent the request, and its index;
    (None, len(routes)) if none. A route whose format cannot express the request (or that
    finds it malformed, reading it whole to translate it) is passed over; if the first route
    is, and no other can take it, its 400 is raised (a fallback keeps the answer it has)."""
    refused: InvalidRequest | None = None
    for index in range(start, len(routes)):
        try:
            return _hop(routes[index], request, exchange, body), index
        except InvalidRequest as error:  # `UntranslatableField` among them
            refused = refused or error
    if refused is not None and start == 0:
        raise refused
    return None, len(routes)


def _hop(
    route: ProviderRoute, request: ProxiedRequest, exchange: HttpExchange, body: bytes
) -> _Hop:
    translation = translation_for(route.kind, request.route)
    if translation is None:
        upstream = body if route.upstream_model is None else upstream_body(route, request, body)
        return _Hop(route, exchange.target, upstream, tuple(exchange.headers), None)
    if request.conversation is None:
        assert request.payload is not None, "the front parses every body of a translated route"
        request.conversation = translate.client_conversation(translation.client, request.payload)
    path, upstream = translate.upstream_request(
        translation.provider, request.conversation, route.upstream_model or request.model
    )
    # Sopy reads the answer, so it must come as it is (not content-encoded).
    headers = tuple(h for h in exchange.headers if h[0] != b"accept-encoding")
    return _Hop(route, path, upstream, headers, translation)


async def _forward(
    inbox_for: ProviderInbox,
    hop: _Hop,
    request: ProxiedRequest,
    exchange: HttpExchange,
) -> trio.MemoryReceiveChannel[UpstreamEvent]:
    events_send, events = trio.open_memory_channel[UpstreamEvent](RELAY_BUFFER)
    route = hop.route
    forward = ForwardRequest(
        request_id=request.rid.decode(),
        method=exchange.method,
        path=hop.path,
        headers=hop.headers,
        body=hop.body,
        route=route,
        reply_to=events_send,
    )
    request.translation = hop.translation
    try:
        inbox = inbox_for(route.provider)
        await deliver(inbox, forward)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        _fail_now(
            events_send,
            NoBackendAvailable(
                f"provider '{route.provider}' was just removed from the configuration"
            ),
        )
    except NoBackendAvailable as error:  # the pools are restarting
        _fail_now(events_send, error)
    else:
        request.pool_inbox = inbox
    return events


def upstream_body(route: ProviderRoute, request: ProxiedRequest, body: bytes) -> bytes:
    """The body for `route`'s provider: as the client sent it, except for a provider that knows
    the model by another name (its `upstream_model`), whose name replaces the model's value."""
    model = route.upstream_model
    if model is None or model == request.model:
        return body
    if request.form_model_span is not None:
        return model_field.with_model(body, request.form_model_span, model.encode())
    if request.json_model_span is None:
        request.json_model_span = model_field.json_model_span(body)
    # The front only forwards a JSON body whose model is a string.
    assert request.json_model_span is not None
    return model_field.with_model(
        body, request.json_model_span, model_field.json_model_value(model)
    )


def _cancel_forward(request: ProxiedRequest) -> None:
    """Tell the pool working on `request` to stop. Without waiting: if its inbox is full, the
    closed reply channel stops the exchange at its next event, the total timeout at the latest."""
    inbox, request.pool_inbox = request.pool_inbox, None
    if inbox is not None:
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            inbox.send_nowait(CancelForward(request.rid.decode()))


def _fail_now(events: trio.MemorySendChannel[UpstreamEvent], error: SopyError) -> None:
    events.send_nowait(UpstreamFailed(error))
    events.close()


def _provider_could_not_answer(first: UpstreamEvent) -> bool:
    return isinstance(first, UpstreamFailed) or (
        isinstance(first, ResponseStart) and first.retryable
    )


def _note_answer(request: ProxiedRequest, hop: _Hop, first: UpstreamEvent) -> None:
    request.provider = hop.route.provider
    if isinstance(first, ResponseStart | UpstreamFailed):
        request.status = first.status if isinstance(first, ResponseStart) else first.error.status
        request.backend, request.attempts = first.backend, first.attempts
        request.failure = first.error.message if isinstance(first, UpstreamFailed) else None


async def _cancel_when_client_leaves(
    exchange: HttpExchange, request: ProxiedRequest, relay_scope: trio.CancelScope
) -> None:
    await exchange.wait_client_gone()
    if not request.finished:
        log.info("request %s: client went away; cancelling upstream", request.rid.decode())
        request.status = CLIENT_CLOSED_REQUEST
        relay_scope.cancel()


async def _pump(
    start: UpstreamEvent,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    if isinstance(start, UpstreamFailed):
        request.finished = True
        error = _public_error(start.error, request)
        await send_error(exchange, error, request.error_shape, request.rid)
        return
    assert isinstance(start, ResponseStart), start
    headers = request.response_headers = client_response_headers(start.headers)
    translation = request.translation
    if translation is not None:
        await _pump_translated(start, headers, translation, events, exchange, request)
        return
    if start.body is not None:
        request.finished = True
        request.tokens = usage_of_body(start.body)
        if request.response_ids is not None:
            request.response_ids.whole(start.status, start.body)
        await send_complete(exchange, start.status, headers, start.body, request.rid)
        return
    await _relay_stream(start.status, headers, events, exchange, request)


async def _relay_stream(
    status: int,
    headers: list[tuple[bytes, bytes]],
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    """Relay a streamed answer (events, audio); chunks already waiting go out in one write with
    what precedes them (the head included), so a burst from the upstream costs one write, not
    one each."""
    ready, end = _take_ready(events)
    headers.append((b"x-request-id", request.rid))
    headers.append(overhead_header(exchange))
    watcher = request.response_ids if status == 200 else None
    usage = None
    if is_event_stream(headers):
        usage = request.stream_usage = StreamUsageWatcher(
            strip_usage_chunk=request.strip_usage_chunk
        )
    if watcher is not None:
        watcher.feed(ready)
    if ready:
        request.first_chunk_at = trio.current_time()
    await exchange.start_response(status, headers, usage.feed(ready) if usage else ready)
    while end is None:
        event = await _next_event(events)
        if isinstance(event, ResponseChunk):
            if request.first_chunk_at is None:
                request.first_chunk_at = trio.current_time()
            ready, end = _take_ready(events)
            data = event.data + ready
            if watcher is not None and not watcher.done:
                watcher.feed(data)
            await exchange.send_chunk(usage.feed(data) if usage else data)
        else:
            end = event
    request.failure = end.error if isinstance(end, ResponseEnd) else "the upstream pool stopped"
    request.finished = True
    rest = usage.end() if usage else b""
    if request.failure is None:
        request.stream_complete = True
        await exchange.end_response(rest)
    elif is_event_stream(headers):
        await exchange.end_response(rest + _sse_error_event(request))
    # Other streams (audio) have no way to say so: left unfinished, the response is cut off
    # with its connection, so the client cannot take it for whole.


async def _pump_translated(
    start: ResponseStart,
    headers: list[tuple[bytes, bytes]],
    translation: Translation,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    """Relay an answer of a translated hop in the client's format: a whole one (or an error)
    translated at once, a stream event by event."""
    assert request.conversation is not None and request.payload is not None
    streamed = start.body is None and 200 <= start.status < 300 and is_event_stream(headers)
    headers[:] = [h for h in headers if h[0] not in _TRANSLATED_AWAY]
    if streamed:
        await _relay_translated_stream(
            start.status, headers, translation, events, exchange, request
        )
        return
    request.finished = True
    body = start.body if start.body is not None else await _whole_stream(events)
    if body is None:
        error = UpstreamError(_broke_off(request))
        request.failure, request.status = "the provider's answer broke off", error.status
        await send_error(exchange, error, request.error_shape, request.rid)
        return
    try:
        answer = translate.whole_answer(
            translation.client,
            translation.provider,
            request.conversation,
            request.payload,
            start.status,
            body,
        )
    except UpstreamError as error:
        request.failure, request.status = error.message, error.status
        await send_error(exchange, _public_error(error, request), request.error_shape, request.rid)
        return
    request.status, request.tokens = answer.status, answer.tokens
    if answer.status == 200:
        request.kept_response = answer.response
    headers.append(_EVENT_STREAM if answer.stream else _JSON)
    await send_complete(exchange, answer.status, headers, answer.body, request.rid)


async def _relay_translated_stream(
    status: int,
    headers: list[tuple[bytes, bytes]],
    translation: Translation,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    exchange: HttpExchange,
    request: ProxiedRequest,
) -> None:
    """`_relay_stream` for a translated hop: each burst of chunks is translated as it comes
    (`StreamTranslation` keeps no more than one unfinished event), and a stream that broke off,
    or that the provider's codec cannot read, ends as the client's format ends an error."""
    assert request.conversation is not None and request.payload is not None
    stream = request.stream_usage = translate.StreamTranslation(
        translation.client, translation.provider, request.conversation, request.payload
    )
    ready, end = _take_ready(events)
    headers += [_EVENT_STREAM, (b"x-request-id", request.rid), overhead_header(exchange)]
    if ready:
        request.first_chunk_at = trio.current_time()
    await exchange.start_response(status, headers, stream.feed(ready))
    while end is None and not stream.ended:
        event = await _next_event(events)
        if isinstance(event, ResponseChunk):
            if request.first_chunk_at is None:
                request.first_chunk_at = trio.current_time()
            ready, end = _take_ready(events)
            await exchange.send_chunk(stream.feed(event.data + ready))
        else:
            end = event
    if stream.ended:  # before the provider's end: the client's stream was ended as an error
        request.failure = stream.provider_failure or "the provider's stream could not be read"
    else:
        request.failure = end.error if isinstance(end, ResponseEnd) else "the upstream pool stopped"
    request.finished = True
    if request.failure is None:
        rest = stream.end()
        request.failure = stream.provider_failure  # a stream that never stopped, say
        request.stream_complete = request.failure is None
        if request.stream_complete and status == 200:
            request.kept_response = stream.response
    else:
        rest = stream.end(_broke_off(request))
    await exchange.end_response(rest)


async def _whole_stream(events: trio.MemoryReceiveChannel[UpstreamEvent]) -> bytes | None:
    """The rest of an answer that came as a stream although the relay needs it whole to
    translate it (an odd provider's error as an event stream); None if it broke off or grew
    past `MAX_WHOLE_STREAM_BYTES`."""
    pieces: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(events)
        if isinstance(event, ResponseChunk):
            size += len(event.data)
            if size > MAX_WHOLE_STREAM_BYTES:
                return None
            pieces.append(event.data)
        elif isinstance(event, ResponseEnd) and event.error is None:
            return b"".join(pieces)
        else:
            return None


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


def _public_error(error: SopyError, request: ProxiedRequest) -> SopyError:
    """What the client sees of a failure the pool reported: the same status and code, and
    what to do in the gateway's words with the request id (never a backend URL or cause)."""
    provider, rid = request.provider, request.rid.decode()
    if isinstance(error, UpstreamTimeout):
        return UpstreamTimeout(
            f"Provider '{provider}' did not answer in time. Retry the request; if it keeps "
            f"timing out, give the gateway's operator the request id {rid}."
        )
    if isinstance(error, UpstreamRateLimited):
        return UpstreamRateLimited(
            f"Provider '{provider}' is rate limited right now. Retry after the Retry-After "
            f"delay; request id {rid}.",
            retry_after=error.retry_after,
        )
    if isinstance(error, NoBackendAvailable):
        return NoBackendAvailable(
            f"Provider '{provider}' has no backend ready right now (they are resting after "
            f"failures, or being reconfigured). Retry after the Retry-After delay; request id "
            f"{rid}.",
            retry_after=error.retry_after,
        )
    if isinstance(error, UpstreamResponseTooLarge):
        return UpstreamResponseTooLarge(
            f"Provider '{provider}' answered with a body over the gateway's {error.limit}-byte "
            "limit for answers that are not streamed (the operator's --max-response-bytes). Ask "
            f"for less per request, or stream it; request id {rid}.",
            limit=error.limit,
        )
    return UpstreamError(
        f"Provider '{provider}' could not answer this request. Retry it; if it keeps failing, "
        f"give the gateway's operator the request id {rid}."
    )


def _broke_off(request: ProxiedRequest) -> str:
    return (
        f"The response of provider '{request.provider}' broke off before its end. Retry the "
        "request; if this keeps happening, give the gateway's operator the request id "
        f"{request.rid.decode()}."
    )


def _sse_error_event(request: ProxiedRequest) -> bytes:
    """The final event of a stream that broke off, as the route's API ends a stream with an
    error (Anthropic's names the event `error`); what happened is in the request's log line."""
    error = UpstreamError(_broke_off(request))
    data = b"data: " + orjson.dumps(error.body(request.error_shape, request.rid.decode())) + b"\n\n"
    return b"event: error\n" + data if request.error_shape is ErrorShape.ANTHROPIC else data


@contextlib.contextmanager
def accounted(
    request: ProxiedRequest,
    exchange: HttpExchange,
    metrics: GatewayMetrics,
    usage: UsageLedger | None,
) -> Iterator[None]:
    """Around one public request's handling: its status for a failure (a `SopyError`'s, or 499
    when the client left), then its one access log line, its metrics and, if it reached a
    provider, its usage record in `usage` (None: the handler records usage itself), however it
    ended; and the key's `admission` gives back its hold with the tokens used. A failure the
    front answers after this (the status set here) is written by then; its
    answer is not, so its total time is up to the failure."""
    try:
        yield
    except SopyError as error:
        request.status = error.status
        raise
    except ClientGone:
        request.status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        log_access(request)
        received_at = exchange.received_at
        # A client that left unanswered was given nothing whose overhead could be told.
        unanswered = exchange.answered_at is None and request.status == CLIENT_CLOSED_REQUEST
        metrics.record_request(
            route=request.route,
            model=request.model if request.model_mapped else UNMAPPED,
            provider=request.provider,
            status=request.status,
            key_id=request.key_id,
            total=trio.current_time() - received_at,
            upstream=request.upstream_wait,
            first_token=None
            if request.first_chunk_at is None
            else request.first_chunk_at - received_at,
            overhead=None if unanswered else overhead_seconds(exchange),
            attempts=request.attempts,
        )
        if usage is not None:
            tokens = request.tokens if request.stream_usage is None else request.stream_usage.tokens
            if request.admission is not None:
                request.admission.finish(tokens, 200 <= request.status < 400)
            if request.provider is not None:
                usage.record(usage_record(request, request.provider))
                if tokens is not None:
                    metrics.record_tokens(
                        request.model if request.model_mapped else UNMAPPED,
                        request.provider,
                        tokens,
                    )
        elif request.admission is not None:
            # The handler counted each answer's tokens itself (the WebSocket mode).
            request.admission.finish(None, True)


def usage_record(request: ProxiedRequest, provider: str) -> UsageRecord:
    streamed = request.stream_usage
    tokens = request.tokens if streamed is None else streamed.tokens
    return UsageRecord(
        at=time.time(),
        request_id=request.rid.decode(),
        key_id=request.key_id,
        model=request.model,
        provider=provider,
        backend=request.backend,
        route=request.route,
        status=request.status,
        tokens=tokens or TokenCounts(),
        tokens_from_provider=tokens is not None,
        upstream_ms=request.upstream_seconds * 1000,
        first_token_ms=None
        if request.first_chunk_at is None
        else (request.first_chunk_at - request.began) * 1000,
        client_gone=request.status == CLIENT_CLOSED_REQUEST,
        cut_short=streamed is not None and not request.stream_complete,
    )


def log_access(request: ProxiedRequest) -> None:
    """The one `sopy.access` line for a /v1 request; never a key or a credential. Values a
    client chose are escaped and capped, as is the backend's own id for the request; a
    failure's detail, in the pool's words, ends it."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    upstream_id = (
        None if request.response_headers is None else upstream_request_id(request.response_headers)
    )
    access_log.info(
        "request %s key=%s model=%s provider=%s backend=%s status=%d upstream_ms=%.1f "
        "attempts=%d total_ms=%.1f upstream_request_id=%s%s",
        request.rid.decode(),
        request.key_id if request.key_id is not None else "-",
        loggable(request.model),
        request.provider or "-",
        request.backend or "-",
        request.status,
        request.upstream_seconds * 1000,
        request.attempts,
        (trio.current_time() - request.began) * 1000,
        "-" if upstream_id is None else loggable(upstream_id.decode("latin-1")),
        ""
        if request.failure is None
        else f" error={loggable(request.failure, MAX_LOGGED_FAILURE_CHARS)}",
    )
